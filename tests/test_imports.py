"""No import circles: the dependency direction reads conf -> tasks -> model, and a broken stage
module breaks only its own entry point."""

import ast
import graphlib
import shutil
import sys
from pathlib import Path

from conftest import ROOT, run_cmd


def project_imports(path: Path) -> set[str]:
    """Project modules `path` imports anywhere in it (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] in ("model", "tasks", "flows")}
    return out


def test_no_module_imports_its_importer():
    modules = {}
    for pkg in ("model", "tasks", "flows"):
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = f
    graph = {}
    for name, f in modules.items():
        deps = {d for d in project_imports(f) if d in modules and d != name}
        # a package's __init__ re-exports its modules: importing `model.x` runs `model` first, not a cycle of its own
        graph[name] = {d for d in deps if not name.startswith(d + ".") or d not in ("model", "tasks", "flows", "tasks.world")}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the circle
    assert not any(d.startswith("tasks.") and d not in ("tasks.common", "tasks.schema") and not d.startswith("tasks.world")
                   for d in graph["tasks.config"]), graph["tasks.config"]
    assert not any(d.startswith("tasks") for m, ds in graph.items() if m.startswith("model") for d in ds)


def test_a_broken_stage_breaks_only_its_own_entry_point(tmp_path):
    for name in ("conf", "tasks", "model"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "tasks/sft.py").write_text("this is not python\n")
    run_cmd([sys.executable, "-m", "tasks.config", "experiment=smoke"], tmp_path)
    assert (tmp_path / "params.yaml").is_file()
    proc = run_cmd([sys.executable, "-m", "tasks.data", "--params", "params.yaml", "data.out_dir=raw"], tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
