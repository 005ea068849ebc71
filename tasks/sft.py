"""sft stage: InstructGPT step 1 (Ouyang et al. 2022 §3.5), supervised fine-tuning on demonstrations.

    python -m tasks.sft                                   # conf/ defaults: models/pretrain -> models/sft
    python -m tasks.sft experiment=smoke sft.epochs=1     # tiny CPU run, seconds
    python -m tasks.sft sft.resume=true                   # continue a killed run even with other settings (tasks/resume.py)

Each demonstration is `prompt\\nAnswer: response<|endoftext|>` (the format of `model/instruct.py`,
used by every later stage); the loss is the next-token cross-entropy on the response tokens
and the EOS only (prompt tokens are masked), so the model learns to answer and to stop. A
prompt too long for the window is cut from the left (its question stays); rows are counted.

The paper's recipe scaled down: several epochs over the demonstrations (16 in the paper, with
a cosine decay; it chose the final model by reward-model score, we keep the last epoch), AdamW,
linear warm-up then cosine decay, optional dropout (the paper used 0.2), gradient clipping.
Batches are a pure function of (seed, epoch, step), and the checkpoint's `trainer.pt` holds the
optimizer, RNG and history, so a killed run started again ends with the same losses (tasks/resume.py).

Evaluation (what SFT adds): greedy responses to the held-out `rl_eval` prompts scored by the
world's oracle (`tasks.world.oracle.score`), mean and by kind, with the EOS rate, for
- `sft`: the fine-tuned model;
- `pretrain_zero_shot`: the pre-trained model given the same format;
- `pretrain_few_shot`: the pre-trained model given up to `few_shot_k` demonstrations of the same
  kind from sft_train first (each ending in <|endoftext|>, the corpus's document separator), as
  many as fit the window: the paper's "GPT-3 prompted" baseline.
Writes `out_dir` (checkpoint), `metrics_file`, `curve_file` and `samples_file` (a table of
prompt, responses and scores, also an MLflow table).
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from pathlib import Path

import torch
from omegaconf import OmegaConf

from model.checkpoint import load_checkpoint, save_checkpoint
from model.instruct import encode_example, encode_prompt, encode_response, few_shot_context, pad_right, respond, response_targets
from model.tokenizer import Tokenizer
from model.loop import Loop
from model.train import curve_csv, epoch_order, optimizer_step, set_dropout, set_lr, warmup_cosine
from tasks import tracking
from tasks.common import (InputError, atomic_write_json, atomic_write_text, markdown_table, read_jsonl, resolve_device, torch_threads)
from tasks.config import stage_main
from tasks.inputs import read_demos, strict_tokenizer
from tasks.resume import Resume
from tasks.world.oracle import score as oracle_score
from tasks.schema import SFTConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)


CURVE = ("step", "train_loss", "val_loss", "val_loss_short")  # the pre-training curve's columns (val_loss_short stays empty)


def lr_at(step: int, total: int, sc: SFTConfig) -> float:
    return warmup_cosine(step, total, sc.warmup_steps, sc.lr, sc.min_lr)


def encode_demos(rows: list[dict], tok: Tokenizer, block: int, where: Path) -> tuple[list[tuple[list[int], int]], dict]:
    """[(ids, n_prompt)] of the demonstrations that fit, and counts {rows, cut, skipped, max_tokens}."""
    out, cut, skipped, longest = [], 0, 0, 0
    for r in rows:
        enc = encode_example(tok, r["prompt"], r["response"], block)
        full = len(encode_prompt(tok, r["prompt"])[0]) + len(encode_response(tok, r["response"]))
        longest = max(longest, full)
        if enc is None:
            skipped += 1
            continue
        ids, n_prompt, was_cut = enc
        cut += was_cut
        out.append((ids, n_prompt))
    if not out:
        raise InputError(f"{where}: no demonstration fits the {block}-token window")
    return out, {"rows": len(rows), "cut": cut, "skipped": skipped, "max_tokens": longest}


def batch_tensors(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, lengths = pad_right([e[0] for e in examples], pad_id)
    n_prompt = torch.tensor([e[1] for e in examples])
    return ids, response_targets(ids, lengths, n_prompt)


@torch.no_grad()
def val_loss(model, examples, pad_id: int, device: str, batch_size: int = 64) -> float:
    model.eval()
    total, count = 0.0, 0
    for b in range(0, len(examples), batch_size):
        x, y = batch_tensors(examples[b : b + batch_size], pad_id)
        logits = model(x.to(device))
        n = int((y != -100).sum())
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), ignore_index=-100, reduction="sum")
        total, count = total + float(loss), count + n
    return total / max(count, 1)


def score_responses(rows: list[dict], responses: list[dict]) -> dict:
    """{mean, perfect, eos_rate, n, by_kind: {kind: {mean, perfect, eos_rate, n}}} of oracle scores."""
    groups = defaultdict(list)
    for r, resp in zip(rows, responses):
        s = oracle_score(r, resp["text"])
        resp["score"] = s
        groups[r["kind"]].append((s, resp["eos"]))

    def summary(items):
        return {"mean": sum(s for s, _ in items) / len(items), "perfect": sum(s == 1.0 for s, _ in items) / len(items),
                "eos_rate": sum(e for _, e in items) / len(items), "n": len(items)}

    out = summary([x for items in groups.values() for x in items])
    out["by_kind"] = {k: summary(v) for k, v in sorted(groups.items())}
    return out


def oracle_eval(model, tok: Tokenizer, rows: list[dict], sc: SFTConfig, contexts: list[list[int]] | None = None) -> tuple[dict, list[dict]]:
    """Greedy responses to `rows` (or to ready `contexts`), scored by the oracle."""
    responses = respond(model, tok, contexts if contexts is not None else [r["prompt"] for r in rows],
                        sc.max_new_tokens, temperature=0.0, batch_size=sc.eval_batch_size)
    summary = score_responses(rows, responses)
    summary["prompts_cut"] = sum(r["cut"] for r in responses)
    return summary, responses


def train(cfg, sc: SFTConfig, device: str) -> tuple[dict, list[dict], Tokenizer]:
    init = Path(sc.init)
    out_dir = Path(sc.out_dir)
    data = Path(sc.data_dir)
    res = Resume(cfg, "sft", sections=["seed", "sft"], inputs=[init, data / "sft_train.jsonl", data / "sft_val.jsonl"],
                 out_dir=out_dir)
    resume_from = res.start()
    resume = resume_from is not None
    ckpt = load_checkpoint(resume_from or init, device=device, load_trainer=resume)
    tok_dir = resume_from or init
    tok = strict_tokenizer(tok_dir)
    model = ckpt.model
    if model.config.vocab_size < tok.vocab_size:
        raise InputError(f"{init}: model vocabulary {model.config.vocab_size} is smaller than its tokenizer's {tok.vocab_size}")
    set_dropout(model, sc.dropout)  # the dropout option; saved checkpoints run with dropout off (config keeps 0)
    block = model.config.block_size
    train_rows = read_demos(data / "sft_train.jsonl", sc.max_train_rows)
    val_rows = read_demos(data / "sft_val.jsonl")
    train_ex, train_counts = encode_demos(train_rows, tok, block, data / "sft_train.jsonl")
    val_ex, val_counts = encode_demos(val_rows, tok, block, data / "sft_val.jsonl")
    steps_per_epoch = math.ceil(len(train_ex) / sc.batch_size)
    total = sc.epochs * steps_per_epoch
    opt = model.configure_optimizers(sc.weight_decay, sc.lr, (0.9, 0.95), "cuda" if device.startswith("cuda") else "cpu")
    loop = Loop("sft", total, eval_every=sc.eval_every, log_every=sc.log_every, ckpt_every=sc.ckpt_every,
                progress=sc.progress, state=ckpt.trainer_state if resume else None)
    if resume:
        opt.load_state_dict(ckpt.trainer_state["optimizer"])
        torch.set_rng_state(ckpt.trainer_state["rng_cpu"])
    else:
        torch.manual_seed(sc.seed)

    def save(metrics: dict, final: bool = False) -> None:
        meta = {**res.meta(), "stage": "sft", "step": loop.step, "metrics": metrics, "init": str(init), "format": "prompt\\nAnswer: response<|endoftext|>",
                "config": OmegaConf.to_container(cfg, resolve=True)}
        state = {"optimizer": opt.state_dict(), **loop.state(), "rng_cpu": torch.get_rng_state()}
        save_checkpoint(out_dir if final else res.folder, model, meta, tokenizer_path=tok_dir / "tokenizer.json", trainer_state=state)
        if final:
            res.finish()

    last_val = next((h["val_loss"] for h in reversed(loop.history) if "val_loss" in h), None)
    while loop.running():
        epoch, i = divmod(loop.step, steps_per_epoch)
        order = epoch_order(sc.seed, epoch, len(train_ex))
        batch = [train_ex[j] for j in order[i * sc.batch_size : (i + 1) * sc.batch_size]]
        x, y = batch_tensors(batch, tok.pad_id)
        set_lr(opt, lr_at(loop.step, total, sc))
        model.train()
        _, loss = model(x.to(device), y.to(device))
        optimizer_step(loss, opt, model.parameters(), sc.grad_clip,
                       f"sft: non-finite loss at step {loop.step + 1}; last good checkpoint kept in {res.folder}")
        loop.advance()
        rec = {"step": loop.step, "train_loss": loss.item()}
        if loop.evaluating():
            last_val = rec["val_loss"] = val_loss(model, val_ex, tok.pad_id, device)
        if loop.logging():
            loop.history.append(rec)
            tracking.log_metrics({"train/loss": rec["train_loss"], "train/lr": lr_at(loop.step - 1, total, sc),
                                  **({"val/loss": rec["val_loss"]} if "val_loss" in rec else {})}, step=loop.step)
            loop.say(f"loss {rec['train_loss']:.4f}" + (f" val {rec['val_loss']:.4f}" if "val_loss" in rec else ""))
        if loop.checkpointing():
            save({"train_loss": rec["train_loss"], "val_loss": last_val})
    if last_val is None:
        last_val = val_loss(model, val_ex, tok.pad_id, device)
    set_dropout(model, 0.0)
    metrics = {"train_loss": loop.history[-1]["train_loss"] if loop.history else float("nan"), "val_loss": last_val,
               "step": loop.step, "epochs": sc.epochs, "train_seconds": loop.seconds(),
               "examples": {"train": train_counts, "val": val_counts}}
    save({k: v for k, v in metrics.items() if k != "examples"}, final=True)
    return metrics, loop.history, tok


def evaluate(sc: SFTConfig, model, tok: Tokenizer, device: str, seed: int) -> tuple[dict, list[dict]]:
    """Oracle scores on rl_eval for SFT and (optionally) the pre-trained baselines, and the samples table."""
    data = Path(sc.data_dir)
    rows = read_jsonl(data / "rl_eval.jsonl")
    rows = rows[: sc.eval_prompts] if sc.eval_prompts >= 0 else rows
    scores, samples = {}, {}
    scores["sft"], samples["sft"] = oracle_eval(model, tok, rows, sc)
    if sc.baselines:
        base = load_checkpoint(sc.init, device=device).model
        scores["pretrain_zero_shot"], samples["pretrain_zero_shot"] = oracle_eval(base, tok, rows, sc)
        pool = defaultdict(list)
        for d in read_demos(data / "sft_train.jsonl"):
            pool[d["kind"]].append(d)
        rng = random.Random(seed)
        budget = base.config.block_size - min(sc.max_new_tokens, 24)
        ctx = [few_shot_context(tok, r["prompt"], r["kind"], pool, sc.few_shot_k, budget, rng) for r in rows]
        scores["pretrain_few_shot"], samples["pretrain_few_shot"] = oracle_eval(base, tok, rows, sc, [c for c, _ in ctx])
        scores["pretrain_few_shot"]["shots_mean"] = sum(n for _, n in ctx) / max(1, len(ctx))
    table = []
    for i, r in enumerate(rows[: sc.n_samples]):
        row = {"id": r["id"], "kind": r["kind"], "prompt": r["prompt"]}
        for name, resp in samples.items():
            row[name] = resp[i]["text"]
            row[f"{name}_score"] = resp[i]["score"]
        table.append(row)
    return scores, table


POLICIES = {"pretrain_zero_shot": "pre-trained, zero-shot", "pretrain_few_shot": "pre-trained, few-shot", "sft": "SFT"}


def table_rows(scores: dict) -> list[dict]:
    """One row per instruction kind and an 'all' row: mean oracle score of each policy, and
    SFT's share of perfect responses and EOS rate."""
    names = [n for n in POLICIES if n in scores]
    rows = []
    for kind in [*scores["sft"]["by_kind"], "all"]:
        of = {n: (scores[n] if kind == "all" else scores[n]["by_kind"].get(kind, {})) for n in names}
        row = {"kind": f"**{kind}**" if kind == "all" else kind, "n": of["sft"].get("n")}
        row.update({POLICIES[n]: of[n].get("mean") for n in names})
        row.update({"SFT perfect": of["sft"].get("perfect"), "SFT EOS rate": of["sft"].get("eos_rate")})
        rows.append(row)
    return rows


def run(cfg) -> dict:
    sc: SFTConfig = OmegaConf.to_object(cfg.sft)
    device = resolve_device(cfg.device)
    with torch_threads(sc.threads):
        with tracking.stage_run(cfg, "sft", sections=["sft", "seed"]):
            metrics, history, tok = train(cfg, sc, device)
            model = load_checkpoint(sc.out_dir, device=device).model
            t0 = time.perf_counter()
            metrics["oracle_score"], table = evaluate(sc, model, tok, device, sc.seed)
            metrics["eval_seconds"] = time.perf_counter() - t0
            import pandas as pd

            df = pd.DataFrame(table)
            Path(sc.samples_file).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(sc.samples_file, df.to_csv(index=False))
            atomic_write_json(sc.metrics_file, metrics)
            atomic_write_text(sc.table_file, markdown_table(
                table_rows(metrics["oracle_score"]),
                "Mean oracle score (0-1) of greedy responses to the held-out rl_eval prompts, by instruction kind."))
            atomic_write_text(sc.curve_file, curve_csv(history, CURVE))
            tracking.log_metrics({f"final/{k}": v for k, v in tracking.flatten(metrics).items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool)})
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.log_table(df, artifact_file="samples.json")
            if cfg.tracking.log_checkpoints:
                tracking.log_checkpoint(sc.out_dir)
    return metrics


if __name__ == "__main__":
    stage_main(run)
