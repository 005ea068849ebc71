"""candidates stage: the K responses per prompt that InstructGPT's labelers rank (Ouyang et al.
2022 §3.5); `collect_rankings` then ranks them.

    python -m tasks.candidates                      # K responses per RL prompt from models/sft
    python -m tasks.candidates experiment=smoke collect_rankings.k=6

For each of the first `n_prompts` prompts of `rl_prompts.jsonl`, K responses from the KV-cache
sampler. Response i comes from checkpoint `policies[i % P]` at temperature `temperatures[i % len]`
(top-p `top_p`): diversity is a setting, since candidates that tie on the true score teach a
reward model nothing (the paper sampled its K from several policies). Writes `candidates_file`
(JSONL: id, kind, prompt, responses, sources, eos) and the same as CSV (`candidates_csv`, one
column per response) for any labelling tool, and the candidates' statistics: mean oracle score
and EOS rate per source, the share of response pairs whose true scores tie, and the oracle
labelers' own consistency (two independent rankings of the same candidates at `oracle_noise`;
InstructGPT's labelers agreed on ~73%). Its settings are the `collect_rankings` section's.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import defaultdict
from pathlib import Path

import torch
from omegaconf import OmegaConf

from model.checkpoint import load_checkpoint
from model.instruct import respond
from tasks import tracking
from tasks.common import InputError, atomic_write_json, atomic_write_text, read_jsonl, resolve_device, write_jsonl
from tasks.config import stage_main
from tasks.inputs import strict_tokenizer
from tasks.schema import CollectRankingsConfig
from tasks.world import oracle


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


def run(cfg) -> dict:
    """The `candidates` stage: K responses per prompt, written as JSONL and CSV."""
    rc: CollectRankingsConfig = OmegaConf.to_object(cfg.collect_rankings)
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


if __name__ == "__main__":
    stage_main(run)
