"""The data stage: output contract, determinism, leakage, difficulty, real sources, bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tasks.common import InputError, read_jsonl
from tasks.config import compose, validate
from tasks.data import run

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data.n_train=60", "data.n_val=30", "data.n_test=60", "data.n_prompt_train=8", "data.n_prompt_test=30",
        "data.n_sft_train=60", "data.n_sft_val=12", "data.n_rl_prompts=60", "data.n_rl_eval=24",
        *(f"data.task_sizes.{t}.train=-1" for t in ("sentiment", "entailment", "paraphrase", "story_cloze"))]
ROW_KEYS = {"classification": {"text", "label"}, "entailment": {"premise", "hypothesis", "label"},
            "similarity": {"text_a", "text_b", "label"}, "multiple_choice": {"context", "choices", "label"}}


def make_cfg(out: Path, *overrides: str, data: dict | None = None):
    cfg = compose(["tracking.enabled=false", f"data.out_dir={out}", *overrides])
    return validate(OmegaConf.merge(cfg, {"data": data or {}}))


def hashes(d: Path) -> dict[str, str]:
    files = sorted(p for p in d.rglob("*") if p.is_file())
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "raw"
    run(make_cfg(out, "data=world", "data.corpus_mb=1.0", *TINY))
    return out


# ---- the world through the stage


def test_contract(world):
    assert {p.name for p in world.iterdir()} == {"corpus.jsonl", "tasks", "prompts", "instructions", "stats.json"}
    assert all(set(r) == {"text"} and r["text"] for r in read_jsonl(world / "corpus.jsonl"))
    for name in ("sentiment", "entailment", "paraphrase", "story_cloze"):
        spec = json.loads((world / "tasks" / name / "task.json").read_text())
        for split in ("train", "val", "test"):
            rows = read_jsonl(world / "tasks" / name / f"{split}.jsonl")
            assert rows and all(set(r) == ROW_KEYS[spec["type"]] for r in rows)
            if spec["type"] == "multiple_choice":
                assert spec["n_choices"] == 4 and "labels" not in spec
                assert all(len(r["choices"]) == 4 and r["label"] in range(4) for r in rows)
            else:
                assert all(r["label"] in spec["labels"] for r in rows)
    for d in sorted((world / "prompts").iterdir()):
        spec = json.loads((d / "task.json").read_text())
        assert set(spec) == {"name", "kind", "fields", "description", "in_context_only"} and spec["kind"] in ("choice", "generate")
        for split in ("train", "test"):
            for r in read_jsonl(d / f"{split}.jsonl"):
                extra = {"answer", "choices"} if spec["kind"] == "choice" else {"answer"}
                assert set(r) == set(spec["fields"]) | extra
                assert spec["kind"] == "generate" or r["answer"] in r["choices"]
    assert {p.name for p in (world / "prompts").iterdir()} >= {"sentiment", "where_is", "antonym", "count", "novel_word", "word_map"}
    flagged = {d.name for d in (world / "prompts").iterdir() if json.loads((d / "task.json").read_text())["in_context_only"]}
    assert flagged == {"novel_word", "word_map"}
    for split in ("sft_train", "sft_val", "rl_prompts", "rl_eval"):
        keys = {"id", "kind", "prompt", "meta"} | ({"response"} if split.startswith("sft") else set())
        assert all(set(r) - {"flaw"} == keys for r in read_jsonl(world / "instructions" / f"{split}.jsonl"))
        assert split.startswith("sft") or not any("flaw" in r for r in read_jsonl(world / "instructions" / f"{split}.jsonl"))


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, world):
    small = ["data=world", "data.corpus_mb=0.1", *TINY]
    run(make_cfg(tmp_path / "a", *small))
    run(make_cfg(tmp_path / "b", *small))
    run(make_cfg(tmp_path / "c", *small, "seed=7"))
    a, b, c = hashes(tmp_path / "a"), hashes(tmp_path / "b"), hashes(tmp_path / "c")
    assert a == b
    differ = [f for f in a if a[f] != c[f]]
    assert "corpus.jsonl" in differ and "tasks/sentiment/test.jsonl" in differ
    assert "instructions/rl_eval.jsonl" in differ


def test_splits_disjoint(world):
    for name in ("sentiment", "entailment", "paraphrase", "story_cloze"):
        sets = [{json.dumps(r, sort_keys=True) for r in read_jsonl(world / "tasks" / name / f"{s}.jsonl")}
                for s in ("train", "val", "test")]
        assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
    for d in (world / "prompts").iterdir():
        tr, te = ({json.dumps(r, sort_keys=True) for r in read_jsonl(d / f"{s}.jsonl")} for s in ("train", "test"))
        assert not tr & te
    prompts = [{r["prompt"] for r in read_jsonl(world / "instructions" / f"{s}.jsonl")}
               for s in ("sft_train", "sft_val", "rl_prompts", "rl_eval")]
    assert sum(map(len, prompts)) == len(set().union(*prompts))


def distinctive(out: Path) -> list[list[str]]:
    """For every held-out item, the strings that together would leak it."""
    items = []
    fields = {"classification": ["text"], "entailment": ["premise"], "similarity": ["text_a", "text_b"],
              "multiple_choice": ["context"]}
    for d in sorted((out / "tasks").iterdir()):
        typ = json.loads((d / "task.json").read_text())["type"]
        items += [[r[f] for f in fields[typ]] for s in ("val", "test") for r in read_jsonl(d / f"{s}.jsonl")]
    prompt_fields = ["text", "premise", "context", "story", "items"]
    for d in sorted((out / "prompts").iterdir()):
        for r in read_jsonl(d / "test.jsonl"):
            own = [r[f] for f in prompt_fields if f in r]
            items.append(own or ([r["text_a"], r["text_b"]] if "text_a" in r else []))
    for s in ("rl_prompts", "rl_eval"):
        for r in read_jsonl(out / "instructions" / f"{s}.jsonl"):
            items.append([r["prompt"]])
            if "story" in r["meta"]:
                items.append([r["meta"]["story"]])
    return [i for i in items if i]  # antonym test words are knowledge the corpus teaches on purpose


def leaked(docs: list[str], items: list[list[str]]) -> list[list[str]]:
    joined = "\n\0".join(docs)
    out = []
    for strings in items:
        if strings[0] in joined and any(all(s in d for s in strings) for d in docs if strings[0] in d):
            out.append(strings)
    return out


def test_no_held_out_item_in_corpus(world):
    docs = [r["text"] for r in read_jsonl(world / "corpus.jsonl")]
    items = distinctive(world)
    assert len(items) > 600
    assert leaked(docs, items) == []
    # the check can fail: plant a premise, a paraphrase pair and an instruction's story
    pair = next(i for i in items if len(i) == 2)
    planted = docs + [items[0][0], " ".join(pair), "Once: " + items[-1][0]]
    assert len(leaked(planted, items)) >= 3


def test_stats_balance_and_difficulty(world):
    st = json.loads((world / "stats.json").read_text())
    assert st["source"] == "world" and st["corpus"]["n_docs"] == len(read_jsonl(world / "corpus.jsonl"))
    assert st["corpus"]["digest"] == hashlib.sha256((world / "corpus.jsonl").read_bytes()).hexdigest()
    for name, t in st["tasks"].items():
        for s in t["splits"].values():
            assert len(set(s["class_counts"].values())) == 1  # balanced
        d = t["difficulty"]
        assert d["majority"] == pytest.approx(d["chance"], abs=0.02)
    assert st["tasks"]["sentiment"]["difficulty"]["bow"] < 0.85
    assert st["tasks"]["story_cloze"]["difficulty"]["overlap"] < 0.7
    assert 0.5 < st["oracle"]["pairwise_agreement"] < 0.95
    kinds, sizes = st["corpus"]["kinds"], st["corpus"]["kind_bytes"]
    assert sum(kinds[k] for k in sizes) == st["corpus"]["n_docs"] and kinds["rejected"] >= 0
    assert sum(sizes.values()) == sum(len(r["text"].encode("utf-8")) for r in read_jsonl(world / "corpus.jsonl"))
    assert {"label_pages", "qa_pages", "glossaries", "counting_pages", "long_stories"} <= set(sizes)
    assert set(st["prompts_in_context_only"]) == {"novel_word", "word_map", "sentiment_unseen", "entailment_unseen",
                                                 "paraphrase_unseen", "mood_of_unseen"}


# ---- real sources


def test_files_csv_task_and_txt_corpus_round_trip(tmp_path):
    notes = "First paragraph\nstill first.\n\n  \nSecond one.\n\n\nThird.\n"
    (tmp_path / "notes.txt").write_text(notes, encoding="utf-8")
    (tmp_path / "more.csv").write_text('body,other\n"A doc, with a comma",x\nAnother doc,y\n', encoding="utf-8")
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        rows = "".join(f"review {split} {i} é,{'pos' if i % 2 else 'neg'}\n" for i in range(n))
        (tmp_path / f"{split}.csv").write_text("review,y\n" + rows, encoding="utf-8")
    task = {"name": "reviews", "type": "classification", "columns": {"text": "review", "label": "y"},
            "labels": ["neg", "pos"], **{s: str(tmp_path / f"{s}.csv") for s in ("train", "val", "test")}}
    out = tmp_path / "raw"
    run(make_cfg(out, "data=files", "data.include_world_tasks=false", "data.text_column=body",
                 data={"paths": [str(tmp_path / "notes.txt"), str(tmp_path / "more.csv")], "tasks": [task]}))
    assert [r["text"] for r in read_jsonl(out / "corpus.jsonl")] == [
        "First paragraph\nstill first.", "Second one.", "Third.", "A doc, with a comma", "Another doc"]
    assert json.loads((out / "tasks/reviews/task.json").read_text()) == {
        "name": "reviews", "type": "classification", "labels": ["neg", "pos"]}
    assert read_jsonl(out / "tasks/reviews/val.jsonl") == [{"text": "review val 0 é", "label": "neg"},
                                                           {"text": "review val 1 é", "label": "pos"}]
    st = json.loads((out / "stats.json").read_text())
    assert [s["n_docs"] for s in st["corpus"]["sources"]] == [3, 2]
    assert st["tasks"]["reviews"]["splits"]["train"]["class_counts"] == {"neg": 2, "pos": 2}


def test_files_multiple_choice_jsonl_and_user_instructions(tmp_path):
    (tmp_path / "c.txt").write_text("one document", encoding="utf-8")
    row = {"ctx": "A story.", "e": ["x.", "y.", "z."], "answer": 2}
    for s in ("train", "val", "test"):
        (tmp_path / f"{s}.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
        (tmp_path / f"i_{s}.jsonl").write_text(json.dumps({"prompt": "Say hi.", "response": "Hi."}) + "\n")
    task = {"name": "mc", "type": "multiple_choice", "columns": {"context": "ctx", "choices": "e", "label": "answer"},
            **{s: str(tmp_path / f"{s}.jsonl") for s in ("train", "val", "test")}}
    ins = {s: str(tmp_path / f"i_{k}.jsonl") for s, k in
           (("sft_train", "train"), ("sft_val", "val"), ("rl_prompts", "test"), ("rl_eval", "test"))}
    out = tmp_path / "raw"
    run(make_cfg(out, "data=files", "data.include_world_tasks=false",
                 data={"paths": [str(tmp_path / "c.txt")], "tasks": [task], "instructions": ins}))
    assert json.loads((out / "tasks/mc/task.json").read_text())["n_choices"] == 3
    assert read_jsonl(out / "tasks/mc/test.jsonl") == [
        {"context": "A story.", "choices": ["x.", "y.", "z."], "label": 2}]
    assert read_jsonl(out / "instructions/sft_train.jsonl") == [
        {"id": "sft_train-00001", "kind": "user", "prompt": "Say hi.", "response": "Hi.", "meta": {}}]
    assert read_jsonl(out / "instructions/rl_eval.jsonl")[0].keys() == {"id", "kind", "prompt", "meta"}


def test_pydoc_offline(tmp_path):
    out = tmp_path / "raw"
    m = run(make_cfg(out, "data=pydoc", "data.include_world_tasks=false"))
    docs = [r["text"] for r in read_jsonl(out / "corpus.jsonl")]
    assert len(docs) > 50 and m["corpus_mb"] > 0.2
    assert any("assert" in d for d in docs)


def test_pydoc_with_world_tasks(tmp_path):
    out = tmp_path / "raw"
    run(make_cfg(out, "data=pydoc", "data.max_docs=5", *TINY))
    assert len(read_jsonl(out / "corpus.jsonl")) == 5
    assert (out / "tasks/sentiment/test.jsonl").is_file() and (out / "instructions/rl_eval.jsonl").is_file()


def test_hf_local_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["one doc", "", "two doc"]}).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "raw"
    run(make_cfg(out, "data=hf", f"data.hf_path={tmp_path / 'ds'}", "data.include_world_tasks=false"))
    assert [r["text"] for r in read_jsonl(out / "corpus.jsonl")] == ["one doc", "two doc"]


def test_hf_without_datasets_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    (tmp_path / "ds").mkdir()
    with pytest.raises(InputError, match="pip install datasets"):
        run(make_cfg(tmp_path / "raw", "data=hf", f"data.hf_path={tmp_path / 'ds'}", "data.include_world_tasks=false"))


# ---- bad input: one line naming the file and row (or the config key)


BAD_CORPORA = {  # case: (file, bytes, expected message)
    "empty corpus": ("empty.txt", b" \n\n \n", r"empty\.txt: no text"),
    "not utf-8": ("latin1.txt", "first line\ncaf\xe9\n".encode("latin-1"), r"latin1\.txt: not UTF-8 text \(line 2"),
    "missing column": ("nocol.csv", b"body\nhello\n", r"nocol\.csv: no column 'text' \(data\.text_column\)"),
}
BAD_TASKS = {  # case: (task type, text of every split file ("csv:" = a .csv file), extra keys, expected message)
    "unknown task type": ("regression", "{}\n", {}, r"data\.tasks\[0\]\.type: must be one of classification, entailment, similarity, multiple_choice, got 'regression'"),
    "label outside set": ("classification", "csv:text,label\na,pos\nb,meh\n", {"labels": ["neg", "pos"]},
                          r"train\.csv: row 2: label 'meh' is not one of data\.tasks\[0\]\.labels"),
    "empty split": ("classification", "", {"labels": ["a"]}, r"train\.jsonl: split 'train' of task 't' is empty"),
    "invalid json row": ("classification", '{"text": "a", "label": "x"}\n{"text": oops}\n', {"labels": ["x"]},
                         r"train\.jsonl: row 2 is not valid JSON"),
    "wrong number of choices": ("multiple_choice", '{"context": "c", "choices": ["a", "b", "c", "d"], "label": 0}\n'
                                                   '{"context": "c", "choices": ["a", "b", "c"], "label": 0}\n', {},
                                r"train\.jsonl: row 2 has 3 choices, expected 4"),
    "missing task column": ("classification", "csv:review,label\na,x\n", {"labels": ["x"]},
                            r"train\.csv: no column 'text' \(data\.tasks\[0\]\.columns\.text\)"),
}


def _bad_data(tmp_path: Path, case: str) -> tuple[dict, str]:
    """The data config of one bad-input case, its files written under tmp_path. -> (data, pattern)."""
    if case in BAD_CORPORA:
        name, content, pattern = BAD_CORPORA[case]
        (tmp_path / name).write_bytes(content)
        return {"paths": [str(tmp_path / name)]}, pattern
    typ, text, extra, pattern = BAD_TASKS[case]
    (tmp_path / "ok.txt").write_text("fine text", encoding="utf-8")
    ext = ".csv" if text.startswith("csv:") else ".jsonl"
    for s in ("train", "val", "test"):
        (tmp_path / f"{s}{ext}").write_text(text.removeprefix("csv:"), encoding="utf-8")
    task = {"name": "t", "type": typ, **{s: str(tmp_path / f"{s}{ext}") for s in ("train", "val", "test")}, **extra}
    return {"paths": [str(tmp_path / "ok.txt")], "tasks": [task]}, pattern


@pytest.mark.parametrize("case", [*BAD_CORPORA, *BAD_TASKS])
def test_bad_input_is_one_line_naming_file_and_row(tmp_path, case):
    data, pattern = _bad_data(tmp_path, case)
    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("earlier output")
    with pytest.raises(InputError, match=pattern) as e:
        run(make_cfg(out, "data=files", "data.include_world_tasks=false", data=data))
    assert "\n" not in str(e.value)
    assert hashes(out) == {"keep.txt": hashlib.sha256(b"earlier output").hexdigest()}


def test_cli_bad_input_exits_2_with_one_line_and_keeps_out_dir(tmp_path, world):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe\n")
    before = hashes(world)
    r = subprocess.run([sys.executable, "-m", "tasks.data", "data=files", f"data.paths=['{bad}']",
                        f"data.out_dir={world}", "tracking.enabled=false"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.txt: not UTF-8 text (line 2" in lines[0], r.stderr
    assert hashes(world) == before


def test_tracked_run_logs_each_source_as_dataset(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("alpha\n\nbeta", encoding="utf-8")
    cfg = compose(["data=files", "data.include_world_tasks=false", "data.out_dir=raw", "data.paths=[a.txt]",
                   f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_dir={tmp_path}/mlruns"])
    run(cfg)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    [r] = mlflow.search_runs(experiment_names=["instructflow"], output_format="list")
    inputs = r.inputs.dataset_inputs
    assert [(i.dataset.name, i.tags[0].value) for i in inputs] == [("a.txt", "corpus")]
    assert len(inputs[0].dataset.digest) == 32
    assert r.data.metrics["corpus_docs"] == 2


@pytest.mark.slow
def test_default_world_no_leaks_and_calibrated_oracle(tmp_path):
    """The default configuration (3 MB corpus, full sizes): no held-out item in the corpus; 73% agreement."""
    out = tmp_path / "raw"
    m = run(make_cfg(out, "data=world"))
    docs = [r["text"] for r in read_jsonl(out / "corpus.jsonl")]
    assert leaked(docs, distinctive(out)) == []
    assert m["oracle_agreement"] == pytest.approx(0.73, abs=0.02)
    assert m["sentiment.bow"] < 0.85


def test_task_sizes_per_task(tmp_path):
    out = tmp_path / "raw"
    run(make_cfg(out, *TINY, "data.corpus_mb=0.05", "data.task_sizes.story_cloze.train=120",
                 "data.task_sizes.entailment.test=90"))
    n = {t: {s: len(read_jsonl(out / "tasks" / t / f"{s}.jsonl")) for s in ("train", "val", "test")}
         for t in ("sentiment", "entailment", "story_cloze")}
    assert n["story_cloze"] == {"train": 120, "val": 28, "test": 60}  # multiples of the 4 answers
    assert n["entailment"] == {"train": 60, "val": 30, "test": 90}
    assert n["sentiment"] == {"train": 60, "val": 30, "test": 60}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["tasks"]["story_cloze"]["splits"]["train"]["n"] == 120


@pytest.mark.parametrize("override, pattern", [
    ("+data.task_sizes.reviews={train: 10}", r"data\.task_sizes\.reviews: unknown name"),
    ("data.task_sizes.sentiment.val=2", r"data\.task_sizes\.sentiment\.val: must be >= 4 or -1, got 2"),
])
def test_bad_task_sizes_one_line(tmp_path, override, pattern):
    out = tmp_path / "raw"
    with pytest.raises(InputError, match=pattern) as e:
        run(make_cfg(out, *TINY, "data.corpus_mb=0.05", override))
    assert "\n" not in str(e.value) and not out.exists()


def test_demo_flaws_share_and_mix_in_the_files_and_rl_splits_unchanged(tmp_path, world):
    """The world's default share of flawed demonstrations, and share 0 / another mix: the sft files
    carry the share (each flawed row marked), every other file is byte for byte the same."""
    clean, mixed = tmp_path / "clean", tmp_path / "mixed"
    run(make_cfg(clean, "data=world", "data.corpus_mb=1.0", *TINY, "data.demo_flaws.share=0"))
    off = [f"data.demo_flaws.mix.{d}=0" for d in ("no_clean_end", "banned_word", "repetitive", "wrong_mood",
                                                  "missing_subject", "off_topic")]  # a weight of 0 leaves a defect out
    run(make_cfg(mixed, "data=world", "data.corpus_mb=1.0", *TINY, "data.demo_flaws.share=0.25",
                 "data.demo_flaws.mix.false_fact=2", *off))
    share = compose([]).data.demo_flaws.share
    for out, want in ((world, share), (clean, 0.0), (mixed, 0.25)):
        for split, n in (("sft_train", 60), ("sft_val", 12)):
            rows = read_jsonl(out / "instructions" / f"{split}.jsonl")
            assert sum("flaw" in r for r in rows) == round(want * n)
    mixed_rows = read_jsonl(mixed / "instructions" / "sft_train.jsonl")
    assert {r["flaw"] for r in mixed_rows if "flaw" in r} <= {"too_long", "false_fact"}
    stats = json.loads((mixed / "stats.json").read_text())
    assert sum(stats["instructions"]["sft_train"]["flaws"].values()) == 15
    a, b, c = hashes(world), hashes(clean), hashes(mixed)
    same = {k for k in a if not k.startswith("instructions/sft") and k != "stats.json"}
    assert same and all(a[k] == b[k] == c[k] for k in same)  # rl_prompts, rl_eval, corpus, tasks: untouched
    if share > 0:
        assert a["instructions/sft_train.jsonl"] != b["instructions/sft_train.jsonl"]


@pytest.mark.parametrize("override, pattern", [
    ("data.demo_flaws.share=1.5", r"data\.demo_flaws\.share: must be between 0 and 1, got 1\.5"),
    ("+data.demo_flaws.mix.rude=1", r"data\.demo_flaws\.mix\.rude: unknown name"),
    ("data.demo_flaws.mix.too_long=-1", r"data\.demo_flaws\.mix\.too_long: must be >= 0, got -1\.0"),
])
def test_bad_demo_flaws_one_line(tmp_path, override, pattern):
    out = tmp_path / "raw"
    with pytest.raises(InputError, match=pattern) as e:
        run(make_cfg(out, *TINY, "data.corpus_mb=0.05", override))
    assert "\n" not in str(e.value) and not out.exists()


def _all_kinds_zero() -> list[str]:
    return [f"data.corpus_kinds.{k}=0" for k in compose([]).data.corpus_kinds]


@pytest.mark.parametrize("overrides, pattern", [
    (["+data.corpus_kinds.poems=0.1"], r"data\.corpus_kinds\.poems: unknown name, must be one of story_qa, "),
    (["data.corpus_kinds.review=-1"], r"data\.corpus_kinds\.review: must be >= 0, got -1\.0"),
    (_all_kinds_zero(), r"data\.corpus_kinds: every share is 0"),
])
def test_bad_corpus_kinds_one_line(tmp_path, overrides, pattern):
    out = tmp_path / "raw"
    with pytest.raises(InputError, match=pattern) as e:
        run(make_cfg(out, *TINY, "data.corpus_mb=0.05", *overrides))
    assert "\n" not in str(e.value) and not out.exists()
