"""collect_rankings: InstructGPT step 2's data (Ouyang et al. 2022 §3.5): K responses per prompt, ranked.

    python -m tasks.collect_rankings sample        # candidates: K responses per RL prompt from models/sft
    python -m tasks.collect_rankings               # rank them with the configured labeler -> rankings.parquet
    python -m tasks.collect_rankings experiment=smoke collect_rankings.k=6 collect_rankings.labeler=oracle

Two DVC stages from this module, so a person can rank between them:

`candidates` (`sample`): for each of the first `n_prompts` prompts of `rl_prompts.jsonl`, K
responses from the KV-cache sampler. Response i comes from checkpoint `policies[i % P]` at
temperature `temperatures[i % len]` (top-p `top_p`): diversity is a setting, since candidates
that tie on the true score teach a reward model nothing (the paper sampled its K from several
policies). Writes `candidates_file` (JSONL: id, kind, prompt, responses, sources, eos) and the
same as CSV (`candidates_csv`, one column per response) for any labelling tool, and the
candidates' statistics: mean oracle score and EOS rate per source, the share of response pairs
whose true scores tie, and the oracle labelers' own consistency (two independent rankings of the
same candidates at `oracle_noise`; InstructGPT's labelers agreed on ~73%).

`collect_rankings` (`run`): rankings by `labeler`:
- `oracle`: the world's noisy oracle (`tasks.world.oracle.rank` at `oracle_noise`), seeded;
- `human`: a person's answers from the append-only `labels_file` (written by the Prefect flow's
  ranking form, `flows/labeling.py`); every candidate must be answered (one line says how many
  are missing and how to answer them);
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
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import OmegaConf

from model import load_checkpoint
from model.instruct import respond
from tasks import tracking
from tasks.common import InputError, atomic_write_json, atomic_write_text, read_jsonl, resolve_device, write_jsonl
from tasks.config import stage_main
from tasks.labels import label_key, parse_ranking, read_candidates, read_labels
from tasks.sft import strict_tokenizer
from tasks.world import oracle
from tasks.schema import CollectRankingsConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)

LABELERS = ("oracle", "human", "file")
COLUMNS = ("id", "kind", "prompt", "responses", "sources", "ranking", "labeler", "time")



def check_config(rc: CollectRankingsConfig) -> None:
    if not 2 <= rc.k <= 9:
        raise InputError(f"collect_rankings.k={rc.k}: K must be between 2 and 9")
    if rc.labeler not in LABELERS:
        raise InputError(f"collect_rankings.labeler={rc.labeler!r}: expected one of {', '.join(LABELERS)}")
    if not rc.policies or not rc.temperatures:
        raise InputError("collect_rankings.policies and collect_rankings.temperatures need at least one entry")
    if any(t <= 0 for t in rc.temperatures):
        raise InputError(f"collect_rankings.temperatures={list(rc.temperatures)}: sampling needs temperatures > 0")


def read_prompts(rc: CollectRankingsConfig) -> list[dict]:
    rows = read_jsonl(rc.prompts_file)
    for i, r in enumerate(rows, start=1):
        if not isinstance(r.get("id"), str) or not isinstance(r.get("prompt"), str):
            raise InputError(f"{rc.prompts_file}: row {i} needs string 'id' and 'prompt'")
    return rows[: rc.n_prompts] if rc.n_prompts >= 0 else rows


def samplers(rc: CollectRankingsConfig) -> list[tuple[str, float]]:
    return [(rc.policies[i % len(rc.policies)], rc.temperatures[i % len(rc.temperatures)]) for i in range(rc.k)]


def source_name(policy: str, temperature: float) -> str:
    return f"{Path(policy).name} T={temperature:g}"


def tie_share(rows: list[dict], candidates: list[dict]) -> float:
    """Share of response pairs whose true (noiseless oracle) scores are equal."""
    ties = pairs = 0
    for r, c in zip(rows, candidates):
        s = [oracle.score(r, x) for x in c["responses"]]
        for a, b in itertools.combinations(s, 2):
            ties, pairs = ties + (a == b), pairs + 1
    return ties / max(pairs, 1)


def sample(cfg) -> dict:
    """The `candidates` stage: K responses per prompt, written as JSONL and CSV."""
    rc: CollectRankingsConfig = OmegaConf.to_object(cfg.collect_rankings)
    check_config(rc)
    device = resolve_device(cfg.device)
    rows = read_prompts(rc)
    if rc.threads > 0:
        torch.set_num_threads(rc.threads)
    t0 = time.perf_counter()
    with tracking.stage_run(cfg, "candidates", sections=["collect_rankings"]):
        responses: list[list[dict]] = []
        models: dict[str, tuple] = {}
        for i, (policy, temp) in enumerate(samplers(rc)):
            if policy not in models:
                models[policy] = (load_checkpoint(policy, device=device).model, strict_tokenizer(Path(policy)))
            model, tok = models[policy]
            g = torch.Generator(device=device).manual_seed(rc.seed * 1000 + i)
            responses.append(respond(model, tok, [r["prompt"] for r in rows], rc.max_new_tokens,
                                     temperature=temp, top_p=rc.top_p, batch_size=rc.batch_size, generator=g))
        sources = [source_name(p, t) for p, t in samplers(rc)]
        cands = [{"id": r["id"], "kind": r.get("kind", ""), "prompt": r["prompt"], "sources": sources,
                  "responses": [responses[i][j]["text"] for i in range(rc.k)],
                  "eos": [responses[i][j]["eos"] for i in range(rc.k)]} for j, r in enumerate(rows)]
        import pandas as pd

        flat = pd.DataFrame([{"id": c["id"], "kind": c["kind"], "prompt": c["prompt"],
                              **{f"response_{i + 1}": x for i, x in enumerate(c["responses"])}} for c in cands])
        by_source = defaultdict(list)
        for r, c in zip(rows, cands):
            for s, x, e in zip(c["sources"], c["responses"], c["eos"]):
                by_source[s].append((oracle.score(r, x), e))
        rng = random.Random(rc.seed + 1)
        metrics = {
            "prompts": len(cands), "k": rc.k, "tie_share": tie_share(rows, cands),
            "labeler_agreement": oracle.labeler_agreement(rows, [c["responses"] for c in cands], rc.oracle_noise, rng),
            "by_source": {s: {"oracle_mean": sum(a for a, _ in v) / len(v), "eos_rate": sum(e for _, e in v) / len(v)}
                          for s, v in by_source.items()},
            "seconds": time.perf_counter() - t0,
        }
        write_jsonl(rc.candidates_file, cands)
        atomic_write_text(rc.candidates_csv, flat.to_csv(index=False))
        atomic_write_json(rc.candidates_metrics, metrics)
        tracking.log_metrics({k: v for k, v in tracking.flatten(metrics).items() if isinstance(v, (int, float))})
    return metrics


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
            f"`python -m flows.pipeline collect_rankings.labeler=human` or `python -m flows.labeling`"
        )
    return out, times, len(labels) - len(out)


def run(cfg) -> dict:
    """The `collect_rankings` stage: rank every candidate with the configured labeler."""
    rc: CollectRankingsConfig = OmegaConf.to_object(cfg.collect_rankings)
    check_config(rc)
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


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sample"]:
        stage_main(sample, argv[1:])
    else:
        stage_main(run, argv)


if __name__ == "__main__":
    main()
