"""data stage: the pre-training corpus, labelled tasks, prompt tasks and instructions.

    python -m tasks.data                                  # the built-in world (~3 MB corpus, ~5 s)
    python -m tasks.data data.corpus_mb=0.1 data.n_train=60 data.n_val=30 data.n_test=60 \\
        data.n_sft_train=60 data.n_sft_val=12 data.n_rl_prompts=60 data.n_rl_eval=24   # tiny, ~1 s
    python -m tasks.data data=pydoc                       # Python's bundled docs as the corpus
    python -m tasks.data data=files 'data.paths=[notes.txt,more.csv]'        # your own files
    python -m tasks.data data=hf data.hf_path=path/to/dataset   # a local Hugging Face dataset

Writes `out_dir` (default data/raw/) in one atomic step (on bad input nothing changes):

    corpus.jsonl                       {"text"}  one document per line
    tasks/<name>/task.json             {"name", "type", "labels"} | {"name", "type", "n_choices"}
    tasks/<name>/{train,val,test}.jsonl
        classification {"text", "label"}          entailment {"premise", "hypothesis", "label"}
        similarity {"text_a", "text_b", "label"}  multiple_choice {"context", "choices", "label": int}
    prompts/<name>/task.json           {"name", "kind": choice|generate, "fields", "description", "in_context_only"}
    prompts/<name>/{train,test}.jsonl  {<fields>..., "answer"} (+ "choices" for kind=choice)
    instructions/{sft_train,sft_val}.jsonl     {"id", "kind", "prompt", "response", "meta"}
    instructions/{rl_prompts,rl_eval}.jsonl    {"id", "kind", "prompt", "meta"}
    stats.json                         counts, class counts, bytes, sha256 digests, task difficulty,
                                       oracle agreement, corpus documents and bytes per kind, the
                                       prompt tasks (templates) only in-context examples can teach

Sources: `world` generates everything (tasks.world). `pydoc`, `files` and `hf` supply the
corpus; the world's tasks, prompts and instructions are added unless
`include_world_tasks=false`. Any source can add labelled tasks (`tasks`) and replace the
instructions (`instructions`) from files; rows are validated into the contract above.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

from tasks import tracking
from tasks.common import InputError, atomic_dir, atomic_write_json, read_jsonl, write_jsonl
from tasks.config import stage_main
from tasks.contracts import TASK_FIELDS
from tasks.world import build
from tasks.world.baselines import difficulty, majority
from tasks.world.instructions import sample_responses
from tasks.world.oracle import labeler_agreement
from tasks.world.prompts import IN_CONTEXT_ONLY, PROMPT_TASKS
from tasks.world.tasks import TASKS
from tasks.schema import UserTaskConfig, InstructionFilesConfig, DataConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)

INSTRUCTION_SPLITS = ("sft_train", "sft_val", "rl_prompts", "rl_eval")
SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")



# ---- reading files


def _utf8(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"{path}: not UTF-8 text (line {line}, byte {e.start})") from None


def read_table(path: str | Path) -> tuple[list[dict], list[str] | None]:
    """Rows of a .jsonl, .csv or .parquet file. -> (rows, columns; None for JSONL)."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        _utf8(path)
        return read_jsonl(path), None
    if suffix == ".csv":
        _utf8(path)
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            return [], []
        except pd.errors.ParserError as e:
            raise InputError(f"{path}: not valid CSV ({str(e).splitlines()[0]})") from None
    elif suffix == ".parquet":
        if not path.is_file():
            raise InputError(f"{path}: file not found")
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise InputError(f"{path}: not a Parquet file ({type(e).__name__})") from None
    else:
        raise InputError(f"{path}: unsupported file type '{suffix}' (use .jsonl, .csv or .parquet)")
    return df.to_dict("records"), [str(c) for c in df.columns]


def _column(path: Path, columns: list[str] | None, col: str, key: str) -> None:
    if columns is not None and col not in columns:
        raise InputError(f"{path}: no column '{col}' ({key}); columns: {', '.join(columns) or 'none'}")


def _text(path: Path, r: int, row: dict, col: str, key: str) -> str:
    if col not in row:
        raise InputError(f"{path}: row {r} has no '{col}' ({key})")
    v = row[col]
    if not isinstance(v, str) or not v.strip():
        raise InputError(f"{path}: row {r}: '{col}' is not a non-empty string")
    return v


def _file_docs(path: Path, dc: DataConfig) -> list[str]:
    if path.suffix.lower() == ".txt":
        text = _utf8(path)
        blocks = re.split(r"\n\s*\n", text) if dc.txt_mode == "paragraph" else [text]
        return [b.strip() for b in blocks if b.strip()]
    rows, cols = read_table(path)
    if not rows:
        return []
    _column(path, cols, dc.text_column, "data.text_column")
    docs = []
    for r, row in enumerate(rows, start=1):
        if dc.text_column not in row:
            raise InputError(f"{path}: row {r} has no '{dc.text_column}' (data.text_column)")
        v = row[dc.text_column]
        if v is not None and not isinstance(v, str):
            raise InputError(f"{path}: row {r}: '{dc.text_column}' is not a string")
        if v and v.strip():
            docs.append(v.strip())
    return docs


def _digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()


def _source(name: str, path: str, docs: list[str]) -> dict:
    return {"name": name, "path": path, "n_docs": len(docs),
            "bytes": sum(len(d.encode("utf-8")) for d in docs), "digest": _digest(docs)}


def external_corpus(dc: DataConfig) -> tuple[list[str], list[dict]]:
    """The corpus of source pydoc | files | hf. -> (documents, one record per source)."""
    if dc.source == "pydoc":
        try:
            import pydoc_data.topics as topics_mod
        except ImportError:
            raise InputError("data.source=pydoc: this Python has no pydoc_data module") from None
        topics = topics_mod.topics
        docs = [topics[k].strip() for k in sorted(topics) if topics[k].strip()]
        sources = [_source("pydoc", topics_mod.__file__, docs)]
    elif dc.source == "files":
        if not dc.paths:
            raise InputError("data.paths: empty (data=files needs at least one corpus file)")
        docs, sources = [], []
        for p in dc.paths:
            path = Path(p)
            if path.suffix.lower() not in SUFFIXES:
                raise InputError(f"{path}: unsupported file type '{path.suffix}' (use {', '.join(SUFFIXES)})")
            file_docs = _file_docs(path, dc)
            if not file_docs:
                raise InputError(f"{path}: no text (empty corpus file)")
            docs += file_docs
            sources.append(_source(path.name, str(path.resolve()), file_docs))
    elif dc.source == "hf":
        docs = _hf_docs(dc)
        sources = [_source(Path(dc.hf_path).name, str(Path(dc.hf_path).resolve()), docs)]
    else:  # the schema allows only the four sources above
        raise AssertionError(dc.source)
    if dc.max_docs >= 0:
        docs = docs[: dc.max_docs]
    if not docs:
        raise InputError(f"data.source={dc.source}: the corpus is empty (no text at all)")
    return docs, sources


def _hf_docs(dc: DataConfig) -> list[str]:
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read what is on disk, never download
    try:
        import datasets
    except ImportError:
        raise InputError("data.source=hf needs the datasets package: pip install datasets") from None
    path = Path(dc.hf_path)
    if not dc.hf_path or not path.exists():
        raise InputError(f"data.hf_path: '{dc.hf_path}' not found (a local dataset folder; nothing is downloaded)")
    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError:  # not a save_to_disk folder: a folder of data files
        ds = datasets.load_dataset(str(path))
    if isinstance(ds, (datasets.DatasetDict, dict)):
        if dc.hf_split not in ds:
            raise InputError(f"{path}: no split '{dc.hf_split}' (data.hf_split); splits: {', '.join(ds)}")
        ds = ds[dc.hf_split]
    _column(path, list(ds.column_names), dc.text_column, "data.text_column")
    return [t.strip() for t in ds[dc.text_column] if isinstance(t, str) and t.strip()]


# ---- user tasks and instructions


def user_task(tc: UserTaskConfig, i: int) -> tuple[dict, dict[str, list[dict]]]:
    """Read, validate and normalise one declared task. -> (task.json, {split: rows})."""
    key = f"data.tasks[{i}]"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", tc.name or "") or tc.name.strip(".") == "":
        raise InputError(f"{key}.name: '{tc.name}' is not a folder name (letters, digits, '_', '-', '.')")
    mc = tc.type == "multiple_choice"
    labels = [] if mc else [str(x) for x in tc.labels]
    if not mc and (not labels or len(set(labels)) != len(labels)):
        raise InputError(f"{key}.labels: give the distinct class names of task '{tc.name}'")
    spec = {"name": tc.name, "type": tc.type, **({} if mc else {"labels": labels})}
    splits, n_choices = {}, tc.n_choices
    for split in ("train", "val", "test"):
        p = getattr(tc, split)
        if not p:
            raise InputError(f"{key}.{split}: no file given for task '{tc.name}'")
        path = Path(p)
        rows, cols = read_table(path)
        if not rows:
            raise InputError(f"{path}: split '{split}' of task '{tc.name}' is empty")
        out = []
        for r, row in enumerate(rows, start=1):
            norm = {}
            for f in TASK_FIELDS[tc.type]:
                col = tc.columns.get(f, f)
                if f == "choices":
                    norm[f] = _choices(path, cols, r, row, col, f"{key}.columns.choices")
                    n_choices = n_choices or len(norm[f])
                    if len(norm[f]) != n_choices:
                        raise InputError(f"{path}: row {r} has {len(norm[f])} choices, expected {n_choices} "
                                         f"({key}.n_choices)")
                else:
                    _column(path, cols, col, f"{key}.columns.{f}")
                    norm[f] = _text(path, r, row, col, f"{key}.columns.{f}")
            lcol = tc.columns.get("label", "label")
            _column(path, cols, lcol, f"{key}.columns.label")
            if lcol not in row or row[lcol] is None:
                raise InputError(f"{path}: row {r} has no '{lcol}' ({key}.columns.label)")
            norm["label"] = _label(path, r, row[lcol], labels, n_choices, key)
            out.append(norm)
        splits[split] = out
    if mc:
        spec["n_choices"] = n_choices
    return spec, splits


def _choices(path: Path, cols: list[str] | None, r: int, row: dict, col: str, key: str) -> list[str]:
    if "," in col:
        names = [c.strip() for c in col.split(",")]
        for c in names:
            _column(path, cols, c, key)
        return [_text(path, r, row, c, key) for c in names]
    _column(path, cols, col, key)
    if col not in row:
        raise InputError(f"{path}: row {r} has no '{col}' ({key})")
    v = row[col]
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            raise InputError(f"{path}: row {r}: '{col}' is not a JSON list of choices") from None
    if hasattr(v, "tolist"):  # a Parquet list column arrives as a numpy array
        v = v.tolist()
    if not isinstance(v, list) or not v or not all(isinstance(c, str) and c.strip() for c in v):
        raise InputError(f"{path}: row {r}: '{col}' is not a list of non-empty strings")
    return v


def _label(path: Path, r: int, v, labels: list[str], n_choices: int, key: str) -> str | int:
    if labels:
        s = str(v)
        if s not in labels:
            raise InputError(f"{path}: row {r}: label '{s}' is not one of {key}.labels [{', '.join(labels)}]")
        return s
    try:
        k = int(v)
    except (TypeError, ValueError):
        raise InputError(f"{path}: row {r}: label '{v}' is not a choice index") from None
    if not 0 <= k < n_choices or str(v).strip() != str(k):
        raise InputError(f"{path}: row {r}: label '{v}' is not a choice index 0..{n_choices - 1}")
    return k


def user_instructions(ic: InstructionFilesConfig) -> dict[str, list[dict]] | None:
    files = {s: getattr(ic, s) for s in INSTRUCTION_SPLITS}
    if not any(files.values()):
        return None
    out = {}
    for split, p in files.items():
        if not p:
            raise InputError(f"data.instructions.{split}: no file given (give all four instruction files or none)")
        path = Path(p)
        rows, _ = read_table(path)
        if not rows:
            raise InputError(f"{path}: instruction split '{split}' is empty")
        norm = []
        for r, row in enumerate(rows, start=1):
            meta = row.get("meta") or {}
            if isinstance(meta, str):
                try:
                    meta = json.loads(meta)
                except json.JSONDecodeError:
                    raise InputError(f"{path}: row {r}: 'meta' is not a JSON object") from None
            if not isinstance(meta, dict):
                raise InputError(f"{path}: row {r}: 'meta' is not a JSON object")
            item = {"id": str(row.get("id") or f"{split}-{r:05d}"), "kind": str(row.get("kind") or "user"),
                    "prompt": _text(path, r, row, "prompt", f"data.instructions.{split}"), "meta": meta}
            if split.startswith("sft"):
                item["response"] = _text(path, r, row, "response", f"data.instructions.{split}")
            norm.append(item)
        out[split] = norm
    return out


# ---- writing and statistics


def _file_stats(path: Path) -> dict:
    data = path.read_bytes()
    return {"bytes": len(data), "digest": hashlib.sha256(data).hexdigest()}


def write_all(tmp: Path, docs: list[str], tasks: dict, prompts: dict, instructions: dict | None) -> dict:
    """Write the contract into `tmp`; return per-file stats for stats.json."""
    write_jsonl(tmp / "corpus.jsonl", [{"text": d} for d in docs])
    st = {"corpus": {"n_docs": len(docs), **_file_stats(tmp / "corpus.jsonl")}, "tasks": {}, "prompts": {},
          "instructions": {}}
    for name, (spec, splits) in tasks.items():
        d = tmp / "tasks" / name
        atomic_write_json(d / "task.json", spec)
        t = st["tasks"][name] = {"type": spec["type"], "splits": {}}
        for split, rows in splits.items():
            write_jsonl(d / f"{split}.jsonl", rows)
            classes = dict(sorted(Counter(str(r["label"]) for r in rows).items()))
            t["splits"][split] = {"n": len(rows), "class_counts": classes, **_file_stats(d / f"{split}.jsonl")}
        t["difficulty"] = difficulty(spec["type"], splits["train"], splits["test"])
    for name, splits in prompts.items():
        d = tmp / "prompts" / name
        atomic_write_json(d / "task.json", {"name": name, **PROMPT_TASKS[name]})
        p = st["prompts"][name] = {"kind": PROMPT_TASKS[name]["kind"], "splits": {}}
        for split, rows in splits.items():
            write_jsonl(d / f"{split}.jsonl", rows)
            p["splits"][split] = {"n": len(rows), **_file_stats(d / f"{split}.jsonl")}
            answers = Counter(r["answer"] for r in rows)
            if len(answers) <= 10:  # a small answer set (yes/no/maybe, moods, counts): its balance
                p["splits"][split]["answer_counts"] = dict(sorted(answers.items()))
        p["majority"] = majority([{"label": r["answer"]} for r in splits["train"]],
                                 [{"label": r["answer"]} for r in splits["test"]]) if splits["test"] else 0.0
    for split, rows in (instructions or {}).items():
        write_jsonl(tmp / "instructions" / f"{split}.jsonl", rows)
        st["instructions"][split] = {"n": len(rows), "kinds": dict(sorted(Counter(r["kind"] for r in rows).items())),
                                     **_file_stats(tmp / "instructions" / f"{split}.jsonl")}
        if any("flaw" in r for r in rows):
            st["instructions"][split]["flaws"] = dict(sorted(Counter(r["flaw"] for r in rows if "flaw" in r).items()))
    return st


def oracle_agreement(rows: list[dict], noise: float, seed: int, k: int = 4) -> float:
    """Pairwise agreement of two labelers at `noise` on K sampled responses per prompt."""
    rng = random.Random(f"{seed}/oracle")
    responses = [sample_responses(r["kind"], r["meta"], rng, k) for r in rows]
    return labeler_agreement(rows, responses, noise, rng)


def _log_inputs(sources: list[dict], out_dir: Path, st: dict) -> None:
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    def log(name: str, path: Path | str, digest: str, context: str) -> None:
        with warnings.catch_warnings():  # a local path matches two registered source types alike
            warnings.simplefilter("ignore")
            src = resolve_dataset_source(str(Path(path).resolve()))
        mlflow.log_input(MetaDataset(src, name=name, digest=digest[:32]), context=context)

    for s in sources:
        log(s["name"], out_dir / s["path"], s["digest"], "corpus")  # an absolute path stays as it is
    for name, t in st["tasks"].items():
        log(f"task/{name}", out_dir / "tasks" / name, _digest([s["digest"] for s in t["splits"].values()]), "task")
    for split, s in st["instructions"].items():
        log(f"instructions/{split}", out_dir / "instructions" / f"{split}.jsonl", s["digest"], "instructions")


def _check_settings(dc: DataConfig) -> None:
    """What the schema's types cannot say (names, ranges and choices are checked there)."""
    if dc.source == "world" and dc.corpus_mb > 0 and not any(w > 0 for w in dc.corpus_kinds.values()):
        raise InputError("data.corpus_kinds: every share is 0 (give one kind of document a positive share)")
    if dc.demo_flaws.share > 0 and not any(w > 0 for w in dc.demo_flaws.mix.values()):
        raise InputError("data.demo_flaws.mix: every weight is 0 (give one defect a positive weight, or share 0)")
    for key in ("n_prompt_train", "n_prompt_test", "n_sft_train", "n_sft_val", "n_rl_prompts", "n_rl_eval"):
        if getattr(dc, key) < 1:
            raise InputError(f"data.{key}: {getattr(dc, key)} is too small (at least 1)")


def split_sizes(dc: DataConfig) -> dict[str, int]:
    return {"train": dc.n_train, "val": dc.n_val, "test": dc.n_test}


def task_split_sizes(dc: DataConfig) -> dict[str, dict[str, int]]:
    """{world task: {split: rows}}: data.task_sizes where set, data.n_<split> elsewhere."""
    out = {}
    for name in TASKS:
        sizes = dc.task_sizes.get(name)
        out[name] = {s: n if sizes is None or getattr(sizes, s) == -1 else getattr(sizes, s)
                     for s, n in split_sizes(dc).items()}
    return out


def run(cfg) -> dict[str, float]:
    dc: DataConfig = cfg.data
    seed = int(cfg.seed) + dc.seed_offset
    _check_settings(dc)
    with tracking.stage_run(cfg, "data", sections=["data", "seed"]) as run_:
        user = [user_task(tc, i) for i, tc in enumerate(dc.tasks)]
        user_ins = user_instructions(dc.instructions)
        with_world = dc.source == "world" or dc.include_world_tasks
        docs, sources = ([], []) if dc.source == "world" else external_corpus(dc)
        world = None
        if with_world:
            corpus_bytes = int(dc.corpus_mb * 1e6) if dc.source == "world" else 0
            world = build(seed, corpus_bytes, split_sizes(dc), (dc.n_prompt_train, dc.n_prompt_test),
                          {"sft_train": dc.n_sft_train, "sft_val": dc.n_sft_val, "rl_prompts": dc.n_rl_prompts,
                           "rl_eval": dc.n_rl_eval}, per_task=task_split_sizes(dc),
                          demo_flaws=(dc.demo_flaws.share, dict(dc.demo_flaws.mix)),
                          corpus_kinds=dict(dc.corpus_kinds))
        if dc.source == "world":
            docs = world.corpus
            if not docs:
                raise InputError(f"data.corpus_mb: {dc.corpus_mb} gives an empty corpus")
            sources = [_source("world", "corpus.jsonl", docs)]  # relative: the same bytes wherever out_dir is
        tasks: dict[str, tuple[dict, dict]] = {}
        if world:
            tasks = {n: ({"name": n, **TASKS[n]}, world.tasks[n]) for n in TASKS}
        for i, (spec, splits) in enumerate(user):
            if spec["name"] in tasks:
                raise InputError(f"data.tasks[{i}].name: '{spec['name']}' is taken (a world task or another "
                                 "user task; rename it or set data.include_world_tasks=false)")
            tasks[spec["name"]] = (spec, splits)
        instructions = user_ins or (world.instructions if world else None)
        with atomic_dir(dc.out_dir) as tmp:
            st = write_all(tmp, docs, tasks, world.prompts if world else {}, instructions)
            st = {"source": dc.source, "seed": seed, **st}
            st["corpus"]["sources"] = sources
            if dc.source == "world":
                st["corpus"]["kinds"] = world.corpus_counts
                st["corpus"]["kind_bytes"] = world.corpus_bytes
            if world:
                st["prompts_in_context_only"] = list(IN_CONTEXT_ONLY)  # template names (prompt_eval.tasks)
            if world and not user_ins:
                st["oracle"] = {"noise": dc.oracle_noise, "responses_per_prompt": 4,
                                "prompts": len(instructions["rl_prompts"]),
                                "pairwise_agreement": oracle_agreement(instructions["rl_prompts"],
                                                                       dc.oracle_noise, seed)}
            atomic_write_json(tmp / "stats.json", st)
        metrics = {"corpus_docs": st["corpus"]["n_docs"], "corpus_mb": st["corpus"]["bytes"] / 1e6}
        for name, t in st["tasks"].items():
            metrics.update({f"{name}.{k}": v for k, v in t["difficulty"].items() if k != "chance"})
        if "oracle" in st:
            metrics["oracle_agreement"] = st["oracle"]["pairwise_agreement"]
        for split, s in st["instructions"].items():
            if split.startswith("sft"):
                metrics[f"{split}.flawed_share"] = sum(s.get("flaws", {}).values()) / max(1, s["n"])
        if run_ is not None:
            _log_inputs(sources, Path(dc.out_dir), st)
            tracking.log_metrics(metrics)
    return metrics


if __name__ == "__main__":
    stage_main(run)
