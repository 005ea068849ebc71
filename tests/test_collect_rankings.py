"""candidates + collect_rankings stages: K sampled responses per prompt, ranked by the oracle, a
person's labels file or an imported file; bad rankings are one line and write nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tasks import candidates as candidates_stage
from tasks import collect_rankings as cr
from tasks.common import InputError, read_jsonl
from tasks.config import compose, write_params
from tasks.labels import append_label, make_label

N = 6
BASE = ["experiment=smoke", "tracking.enabled=false", f"collect_rankings.n_prompts={N}", "collect_rankings.max_new_tokens=6"]


@pytest.fixture
def candidates(instruct_workspace) -> list[dict]:
    shutil.copytree("models/pretrain", "models/sft")  # any checkpoint samples; mechanics only
    candidates_stage.run(compose(BASE))
    return read_jsonl("data/rankings/candidates.jsonl")


def test_candidates_are_diverse_seeded_and_exported(candidates):
    assert len(candidates) == N and all(len(c["responses"]) == 4 for c in candidates)
    assert candidates[0]["sources"] == ["sft T=0.8", "sft T=1", "sft T=1.2", "sft T=1.5"]
    stats = json.loads(Path("metrics/candidates.json").read_text())
    assert stats["prompts"] == N and 0 <= stats["tie_share"] <= 1 and 0 <= stats["labeler_agreement"] <= 1
    assert set(stats["by_source"]) == set(candidates[0]["sources"])
    csv = pd.read_csv("data/rankings/candidates.csv")
    assert list(csv.columns) == ["id", "kind", "prompt", "response_1", "response_2", "response_3", "response_4"]
    first = Path("data/rankings/candidates.jsonl").read_bytes()
    candidates_stage.run(compose(BASE))
    assert Path("data/rankings/candidates.jsonl").read_bytes() == first  # same seed, same candidates


def test_oracle_rankings_parquet(candidates):
    metrics = cr.run(compose(BASE))
    df = pd.read_parquet("data/rankings/rankings.parquet")
    assert list(df.columns) == list(cr.COLUMNS) and len(df) == N == metrics["prompts"]
    for row in df.itertuples():
        assert sorted(row.ranking.tolist()) == [0, 1, 2, 3] and row.labeler == "oracle" and len(row.responses) == 4
    # noiseless oracle: the ranking is sorted by true score
    from tasks.world import oracle

    prompts = {r["id"]: r for r in read_jsonl("data/raw/instructions/rl_prompts.jsonl")}
    cr.run(compose([*BASE, "collect_rankings.oracle_noise=0"]))
    for row in pd.read_parquet("data/rankings/rankings.parquet").itertuples():
        s = [oracle.score(prompts[row.id], row.responses[i]) for i in row.ranking]
        assert s == sorted(s, reverse=True)


def test_k_from_2_to_9(instruct_workspace):
    shutil.copytree("models/pretrain", "models/sft")
    candidates_stage.run(compose([*BASE, "collect_rankings.k=2", "collect_rankings.n_prompts=2"]))
    assert all(len(c["responses"]) == 2 for c in read_jsonl("data/rankings/candidates.jsonl"))
    with pytest.raises(InputError, match="between 2 and 9"):
        candidates_stage.run(compose([*BASE, "collect_rankings.k=10"]))


def test_file_labeler_imports_rankings(candidates):
    Path("labels").mkdir()
    rows = [{"id": c["id"], "ranking": "2,1,4,3"} for c in candidates]
    pd.DataFrame(rows).to_csv("labels/rankings.csv", index=False)
    cr.run(compose([*BASE, "collect_rankings.labeler=file"]))
    df = pd.read_parquet("data/rankings/rankings.parquet")
    assert len(df) == N and all(r.tolist() == [1, 0, 3, 2] for r in df["ranking"]) and set(df["labeler"]) == {"file"}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda rows: rows[2].update(ranking="1,1,2,3"), "row 3: ranking"),
        (lambda rows: rows[1].update(ranking="1,2,3"), "row 2: ranking"),
        (lambda rows: rows[0].update(id="nope"), "row 1: unknown prompt id 'nope'"),
        (lambda rows: rows[4].update(id=rows[3]["id"]), "row 5: duplicate prompt id"),
        (lambda rows: [r.pop("ranking") for r in rows], "missing column 'ranking'"),
    ],
)
def test_bad_import_is_one_line_and_writes_nothing(candidates, edit, message):
    Path("labels").mkdir()
    rows = [{"id": c["id"], "ranking": "1,2,3,4"} for c in candidates]
    edit(rows)
    pd.DataFrame(rows).to_csv("labels/rankings.csv", index=False)
    write_params(compose([*BASE, "collect_rankings.labeler=file"]), "params.yaml")
    proc = subprocess.run([sys.executable, "-m", "tasks.collect_rankings", "--params", "params.yaml"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "labels/rankings.csv" in lines[0] and message in lines[0], proc.stderr
    assert not Path("data/rankings/rankings.parquet").exists() and not Path("metrics/collect_rankings.json").exists()


def test_human_labels_are_used_and_missing_ones_named(candidates):
    labels = Path("labels/human.jsonl")
    for c in candidates[:-1]:
        append_label(labels, make_label(c, [3, 2, 1, 0]))
    with pytest.raises(InputError, match=f"1 of {N} candidates have no human ranking"):
        cr.run(compose([*BASE, "collect_rankings.labeler=human"]))
    append_label(labels, make_label(candidates[-1], [0, 1, 2, 3]))
    cr.run(compose([*BASE, "collect_rankings.labeler=human"]))
    df = pd.read_parquet("data/rankings/rankings.parquet")
    assert df["ranking"].iloc[0].tolist() == [3, 2, 1, 0] and df["ranking"].iloc[-1].tolist() == [0, 1, 2, 3]
    assert set(df["labeler"]) == {"human"}
