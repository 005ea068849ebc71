"""The layering, read from the source: stages import no stage, the benches import only the model
and the library, the flows import no stage, and every dvc.yaml stage lists as code deps exactly
the project files its command imports (so no code change can leave a stage stale unnoticed)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tasks", "model", "flows")

# Stage modules: a DVC stage's command, or a report the Makefile and flows run. Each is wiring.
STAGES = {"tasks.data", "tasks.tokenize", "tasks.pretrain", "tasks.finetune", "tasks.finetune_report", "tasks.prompt_eval",
          "tasks.sft", "tasks.candidates", "tasks.collect_rankings", "tasks.train_rm", "tasks.ppo", "tasks.dpo",
          "tasks.evaluate", "tasks.report", "tasks.scaling", "tasks.seeds", "tasks.gpt1_seeds"}
# Shared infrastructure in tasks/: imported by stages, importing no stage.
SHARED = {
    "tasks", "tasks.common",  # I/O helpers, InputError
    "tasks.config", "tasks.schema",  # composing and validating conf/
    "tasks.tracking",  # MLflow
    "tasks.inputs",  # readers of the inputs several stages share
    "tasks.contracts",  # the fields one stage writes and another reads
    "tasks.labels",  # the append-only human labels file
    "tasks.resume",  # where a long stage keeps its unfinished run, and whether to continue it
    "tasks.prompting",  # tasks written as prompts: rendering and scoring (prompt_eval, evaluate)
    "tasks.zeroshot",  # the bars fine-tuning must clear, on its own test rows (finetune)
    "tasks.induction",  # the copy probe on a checkpoint (scaling; also a command of its own)
    "tasks.copy_warmup",  # a command: a checkpoint trained to copy, for pretrain.init (not a stage)
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = project_modules()


def imports_of(path: Path) -> set[str]:
    """Project modules a file imports, anywhere in it (function-level imports too), with the
    packages whose __init__ the import runs."""
    found = set()
    pkg = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
                if ".".join(parts[:i]) in MODULES:
                    found.add(".".join(parts[:i]))
    return found


GRAPH = {m: imports_of(p) - {m} for m, p in MODULES.items()}


def closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += GRAPH.get(m, ())
    return seen


def test_every_tasks_module_is_a_stage_or_shared():
    tasks_modules = {m for m in MODULES if m.split(".")[0] == "tasks" and not m.startswith("tasks.world")}
    assert tasks_modules - STAGES - SHARED == set(), "classify the new module in tests/test_layers.py"
    assert STAGES & SHARED == set() and STAGES | SHARED >= tasks_modules


def test_no_stage_imports_a_stage_and_shared_code_imports_none():
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() for d in deps if d in STAGES and m in STAGES | SHARED]
    assert bad == []


def test_model_is_plain_pytorch():
    """model/ imports nothing of tasks/ or flows/, nor the orchestration and tracking libraries."""
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() if m.startswith("model") for d in deps if not d.startswith("model")]
    assert bad == []
    for m, path in MODULES.items():
        if m.startswith("model"):
            tops = {n.split(".")[0] for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                    for n in ([a.name for a in node.names] if isinstance(node, ast.Import)
                              else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])}
            assert not tops & {"prefect", "mlflow", "dvc", "hydra", "omegaconf"}, m


def test_benches_and_flows_import_no_stage():
    for path in sorted((ROOT / "bench").glob("*.py")):
        deps = imports_of(path)
        assert {d for d in deps if d in STAGES} == set(), path.name
        assert {d.split(".")[0] for d in deps} <= {"model", "tasks"}, path.name
    flows_into_stages = {f"{m} imports {d}" for m, deps in GRAPH.items() if m.startswith("flows") for d in deps
                         if d in STAGES and d not in ("tasks.scaling", "tasks.seeds", "tasks.gpt1_seeds")}  # the flows' own reports
    assert flows_into_stages == set()


def test_imports_from_the_model_package_name_its_modules():
    """`model/__init__.py` loads its names lazily, so `from model import GPT` would hide the module
    it comes from (and so a code dep) from the import graph: import names from their module."""
    bad = []
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "model" and not node.level:
                bad += [f"{m}: from model import {a.name}" for a in node.names if f"model.{a.name}" not in MODULES]
    assert bad == []


def code_deps(stage: dict) -> set[str]:
    return {d for d in stage.get("deps", []) if isinstance(d, str) and "${" not in d and d.split("/")[0] in PACKAGES}


def covered(path: str, deps: set[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def test_dvc_code_deps_are_the_import_closure_of_each_command():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    problems = []
    for name, st in stages.items():
        body = st.get("do", st)
        module = body["cmd"].split("python -m ", 1)[1].split()[0]
        need = {str(MODULES[m].relative_to(ROOT)) for m in closure(module)}
        deps = code_deps(body)
        missing = sorted(p for p in need if not covered(p, deps))
        extra = sorted(d for d in deps if not any(covered(p, {d}) for p in need))
        if missing or extra:
            problems.append(f"{name}: missing {missing}, not imported {extra}")
    assert problems == []


def test_a_broken_stage_breaks_only_its_own_entry_point(tmp_path):
    """A syntax error in one stage module (in a copy of the tree): every other stage still imports."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "tasks" / "sft.py").write_text("def broken(:\n", encoding="utf-8")
    script = (
        "import importlib, json, sys\n"
        f"ok = {{}}\nfor m in {sorted(STAGES)!r}:\n"
        "    try:\n        importlib.import_module(m); ok[m] = True\n"
        "    except Exception:\n        ok[m] = False\n"
        "print(json.dumps(ok))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    import json

    ok = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [m for m, good in ok.items() if not good] == ["tasks.sft"], proc.stderr[-2000:]


def test_the_stage_that_builds_the_model_tracks_its_shape():
    """pretrain builds the GPT from the `model` section (every later stage reads the shape from a
    checkpoint): a change there (`dvc exp run -S model.pos_encoding=rope`) must rerun it."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "model" in stages["pretrain"]["params"]
    module = {n: st.get("do", st)["cmd"].split("python -m ", 1)[1].split()[0] for n, st in stages.items()}
    readers = sorted(n for n in stages if "cfg.model" in MODULES[module[n]].read_text())
    assert readers == ["pretrain"], readers
