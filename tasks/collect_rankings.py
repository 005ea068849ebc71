"""collect_rankings: InstructGPT step 2's data (Ouyang et al. 2022 §3.5): K responses per prompt, ranked.

    python -m tasks.candidates                     # first, the candidates: K responses per RL prompt
    python -m tasks.collect_rankings               # rank them with the configured labeler -> rankings.parquet
    python -m tasks.collect_rankings experiment=smoke collect_rankings.k=6 collect_rankings.labeler=oracle

The candidates come from the `candidates` stage (`tasks/candidates.py`); a person can rank between
the two stages. Rankings by `labeler`:
- `oracle`: the world's noisy oracle (`tasks.world.oracle.rank` at `oracle_noise`), seeded;
- `human`, `web`: a person's answers from the append-only `labels_file` (written by the Prefect
  flow's ranking form, `flows/labeling.py`, or the ranking page, `flows/ranking_page.py`: the two
  mix); every candidate must be answered (one line says how many are missing and how to answer them);
- `file`: rankings imported from `import_file` (.csv, .jsonl or .parquet with columns `id` and
  `ranking`: response numbers 1..K best first, e.g. "3,1,4,2"), for any labelling tool.
Bad input (not a permutation of 1..K, a wrong K, an unknown or duplicate id, a missing column)
is one line naming the file and row; nothing is written.
Writes `out_file` (Parquet, one row per prompt: id, kind, prompt, responses, sources, ranking as
0-based indices into responses best first, labeler, time) and `metrics_file`.
"""

from __future__ import annotations

import itertools
import random
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from tasks import tracking
from tasks.common import InputError, atomic_write_json, read_jsonl
from tasks.config import stage_main
from tasks.labels import label_key, parse_ranking, read_candidates, read_labels
from tasks.world import oracle
from tasks.schema import CollectRankingsConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)

COLUMNS = ("id", "kind", "prompt", "responses", "sources", "ranking", "labeler", "time")


def read_import(path: Path) -> list[dict]:
    """Rows {id, ranking} of a labelling tool's file (.csv, .jsonl, .parquet); row numbers are 1-based records."""
    import pandas as pd

    if not path.is_file():
        raise InputError(f"{path}: not found (export is the candidates CSV: rank it and save id,ranking here)")
    if path.suffix == ".jsonl":
        rows = read_jsonl(path)
    elif path.suffix in (".csv", ".parquet"):
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False) if path.suffix == ".csv" else pd.read_parquet(path)
        except Exception as e:
            raise InputError(f"{path}: cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        rows = df.to_dict("records")
    else:
        raise InputError(f"{path}: expected .csv, .jsonl or .parquet")
    for col in ("id", "ranking"):
        if rows and col not in rows[0]:
            raise InputError(f"{path}: missing column '{col}'")
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def imported_rankings(rc: CollectRankingsConfig, cands: dict[str, dict]) -> dict[str, list[int]]:
    path = Path(rc.import_file)
    out: dict[str, list[int]] = {}
    for i, row in enumerate(read_import(path), start=1):
        pid = str(row.get("id", ""))
        where = f"{path}: row {i}"
        if pid not in cands:
            raise InputError(f"{where}: unknown prompt id {pid!r}")
        if pid in out:
            raise InputError(f"{where}: duplicate prompt id {pid!r}")
        ranking = row["ranking"]
        if hasattr(ranking, "tolist"):
            ranking = ranking.tolist()
        out[pid] = parse_ranking(ranking, len(cands[pid]["responses"]), where)
    return out


def human_rankings(rc: CollectRankingsConfig, cands: list[dict]) -> tuple[dict[str, list[int]], dict[str, str], int]:
    """(rankings, times) for every candidate from the labels file, and the count of stale labels kept."""
    labels = read_labels(rc.labels_file)
    out, times = {}, {}
    for c in cands:
        lab = labels.get(label_key(c["id"], c["responses"]))
        if lab is not None:
            out[c["id"]], times[c["id"]] = list(lab["ranking"]), lab.get("time", "")
    missing = len(cands) - len(out)
    if missing:
        raise InputError(
            f"{rc.labels_file}: {missing} of {len(cands)} candidates have no human ranking; answer them with "
            f"`python -m flows.ranking_page` (a web page), `python -m flows.labeling` (the Prefect form) or "
            f"`python -m flows.pipeline collect_rankings.labeler=web`"
        )
    return out, times, len(labels) - len(out)


def run(cfg) -> dict:
    """The `collect_rankings` stage: rank every candidate with the configured labeler."""
    rc: CollectRankingsConfig = OmegaConf.to_object(cfg.collect_rankings)
    prompts = {r["id"]: r for r in read_jsonl(rc.prompts_file)}
    cands = read_candidates(rc.candidates_file)
    for c in cands:
        if len(c["responses"]) != rc.k:
            raise InputError(f"{rc.candidates_file}: {c['id']} has {len(c['responses'])} responses, collect_rankings.k={rc.k}")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    times: dict[str, str] = {}
    stale = 0
    if rc.labeler == "oracle":
        rng = random.Random(rc.seed + 2)
        rankings = {c["id"]: oracle.rank(prompts.get(c["id"], c), c["responses"], rc.oracle_noise, rng) for c in cands}
    elif rc.labeler == "file":
        rankings = imported_rankings(rc, {c["id"]: c for c in cands})
    else:
        rankings, times, stale = human_rankings(rc, cands)
    import pandas as pd

    rows = [{"id": c["id"], "kind": c.get("kind", ""), "prompt": c["prompt"], "responses": list(c["responses"]),
             "sources": list(c.get("sources", [""] * len(c["responses"]))), "ranking": rankings[c["id"]],
             "labeler": rc.labeler, "time": times.get(c["id"], now)} for c in cands if c["id"] in rankings]
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    # how often the labeler's order agrees with the true scores, on pairs whose scores differ
    agree = pairs = 0
    for r in rows:
        s = [oracle.score(prompts.get(r["id"], r), x) for x in r["responses"]]
        for a, b in itertools.combinations(r["ranking"], 2):
            if s[a] != s[b]:
                agree, pairs = agree + (s[a] > s[b]), pairs + 1
    metrics = {"prompts": len(rows), "candidates": len(cands), "k": rc.k, "labeler": rc.labeler,
               "oracle_agreement": agree / max(pairs, 1), "stale_labels": stale}
    with tracking.stage_run(cfg, "collect_rankings", sections=["collect_rankings"]):
        path = Path(rc.out_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp"
        df.to_parquet(tmp, index=False)
        tmp.replace(path)
        atomic_write_json(rc.metrics_file, metrics)
        tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.log_input(mlflow.data.from_pandas(df.drop(columns=["responses", "sources", "ranking"]),
                                                     source=str(path), name="rankings"), context="rankings")
    return metrics


if __name__ == "__main__":
    stage_main(run)
