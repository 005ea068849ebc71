"""pretrain stage: GPT-1 §3.1, next-token pre-training on the tokenized corpus.

    python -m tasks.pretrain                                     # conf/ defaults
    python -m tasks.pretrain experiment=smoke pretrain.max_steps=50   # tiny CPU run, seconds
    python -m tasks.pretrain pretrain.resume=true                # continue even with other settings (tasks/resume.py)
    torchrun --nproc_per_node=2 -m tasks.pretrain --params params.yaml   # DDP (gloo on CPU)

AdamW (fused on CUDA; no decay on biases, norms, embeddings), linear warm-up then cosine
decay, gradient clipping and accumulation, periodic validation, bf16 autocast on CUDA,
optional `torch.compile`. Batches are a pure function of (seed, step): every step draws
`batch_size` random windows from train.bin, split across processes and micro-batches, so
the same global batch is seen whatever the world size, and a resumed run replays exactly.
With `short_fraction` > 0 that share of every micro-batch's windows is cut into pieces of
`short_block` tokens (the same tokens, attention within each piece), so a long window does not
starve the short contexts that zero-shot prompts and instructions live in. Validation reports
`val_loss` on whole windows and `val_loss_short` on the same windows cut into `short_block` pieces.
The checkpoint (atomic) holds `trainer.pt` (optimizer, RNG, history) for exact resumption.

After training, the in-context learning score of Olsson et al. (2022) on held-out val.bin only
(`model/icl.py`): the mean loss at late positions of windows that start at document starts minus
the mean at early positions (`icl_score`, negative = the model uses far context), the same over
windows inside one long document (`icl_score_long`, null when no document is `icl.late[1]` tokens
long), and the loss by position in `position_loss_file`.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from model.checkpoint import load_checkpoint, save_checkpoint
from model.gpt import GPT, GPTConfig
from model.load import from_pretrained
from model.data import step_offsets, window_batch
from model.icl import buckets, position_loss, scaled_ranges
from model.train import apply_gradients, curve_csv, set_lr, warmup_cosine
from tasks import tracking
from tasks.common import InputError, atomic_write_json, atomic_write_text, resolve_device
from tasks.config import stage_main
from tasks.inputs import load_tokens
from tasks.resume import Resume
from tasks.schema import PretrainConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)


class NonFiniteLoss(InputError):
    """Training diverged; the last good checkpoint is kept."""


def lr_at(step: int, pc: PretrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr` at `max_steps`."""
    return warmup_cosine(step, pc.max_steps, pc.warmup_steps, pc.lr, pc.min_lr)


class Trainer:
    """Holds the model, optimizer and data of one pre-training run (one per process)."""

    def __init__(self, cfg, pc: PretrainConfig):
        self.cfg, self.pc = cfg, pc
        self.ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
        device = resolve_device(cfg.device)
        if self.ddp:
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend=backend)
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            if device.startswith("cuda"):
                device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
                torch.cuda.set_device(device)
        else:
            self.rank, self.world = 0, 1
        self.device = device
        self.master = self.rank == 0
        if pc.threads > 0:
            torch.set_num_threads(pc.threads)

        self.data_dir = Path(pc.data_dir)
        self.meta, self.train_data, self.val_data = load_tokens(self.data_dir)
        mc = cfg.model
        self.T = pc.block_size if pc.block_size > 0 else mc.block_size
        if self.T > mc.block_size:
            raise InputError(f"pretrain.block_size={self.T} exceeds the model's context model.block_size={mc.block_size}")
        if pc.short_block <= 0 or self.T % min(pc.short_block, self.T):
            raise InputError(f"pretrain.short_block={pc.short_block} must be > 0 and divide the training window ({self.T} tokens)")
        self.S = min(pc.short_block, self.T)
        n_short = pc.short_fraction * pc.micro_batch_size
        if not 0.0 <= pc.short_fraction <= 1.0 or abs(n_short - round(n_short)) > 1e-9:
            raise InputError(
                f"pretrain.short_fraction={pc.short_fraction} must be in [0, 1] and a whole number of the "
                f"micro-batch's {pc.micro_batch_size} windows"
            )
        self.n_short = int(round(n_short))
        if pc.batch_size % (pc.micro_batch_size * self.world):
            raise InputError(
                f"pretrain.batch_size={pc.batch_size} is not divisible by micro_batch_size={pc.micro_batch_size} x processes={self.world}"
            )
        self.accum = pc.batch_size // (pc.micro_batch_size * self.world)
        try:
            scaled_ranges(pc.icl.early, pc.icl.late, self.T)
        except ValueError as e:
            raise InputError(f"pretrain.icl: {e}") from None
        for name, data in (("train", self.train_data), ("val", self.val_data)):
            if len(data) <= self.T + 1:
                raise InputError(f"{self.data_dir / (name + '.bin')}: {len(data)} tokens, fewer than one window of {self.T + 1}")

        self.out_dir = Path(pc.out_dir)
        self.resume = Resume(cfg, "pretrain", sections=["seed", "model", "pretrain"], out_dir=pc.out_dir,
                             inputs=[self.data_dir] + ([pc.init] if pc.init != "scratch" else []))
        resume_from = self.resume.start()
        self.trainer_state = None
        if resume_from is not None:
            ckpt = load_checkpoint(resume_from, load_trainer=True)
            self.model, self.trainer_state = ckpt.model, ckpt.trainer_state
        elif pc.init != "scratch":
            self.model = from_pretrained(pc.init, dropout=mc.dropout)
        else:
            torch.manual_seed(cfg.seed)
            gcfg = GPTConfig(vocab_size=self.meta["vocab_size"], **{k: v for k, v in OmegaConf.to_container(mc).items() if k != "name"})
            self.model = GPT(gcfg)
        if self.model.config.vocab_size < self.meta["vocab_size"]:
            raise InputError(
                f"{pc.init}: model vocabulary {self.model.config.vocab_size} is smaller than the tokenizer's {self.meta['vocab_size']}"
            )
        self.model.to(self.device)
        self.optimizer = self.model.configure_optimizers(
            pc.weight_decay, pc.lr, (pc.beta1, pc.beta2), "cuda" if self.device.startswith("cuda") else "cpu"
        )
        self.step, self.history = 0, []
        if self.trainer_state is not None:
            st = self.trainer_state
            self.optimizer.load_state_dict(st["optimizer"])
            self.step, self.history = int(st["step"]), list(st["history"])
            torch.set_rng_state(st["rng_cpu"])
        self.net = torch.compile(self.model) if pc.compile else self.model
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(self.net, device_ids=[self.device] if self.device.startswith("cuda") else None)
        use_bf16 = pc.dtype == "bfloat16" or (pc.dtype == "auto" and self.device.startswith("cuda"))
        dev_type = "cuda" if self.device.startswith("cuda") else "cpu"
        self.autocast = (
            (lambda: torch.autocast(device_type=dev_type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
        )
        # fixed validation windows, the same at every evaluation and after resuming
        n_val = pc.eval_batches * pc.micro_batch_size
        g = torch.Generator().manual_seed(cfg.seed + 1)
        self.val_offsets = torch.randint(0, len(self.val_data) - self.T - 1, (n_val,), generator=g)

    def mean_over_ranks(self, x: torch.Tensor) -> float:
        if self.ddp:
            x = x.detach().clone()
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
            x /= self.world
        return x.item()

    def train_step(self) -> float:
        pc, mb = self.pc, self.pc.micro_batch_size
        set_lr(self.optimizer, lr_at(self.step, pc))
        offsets = step_offsets(self.cfg.seed, self.step, pc.batch_size, len(self.train_data) - self.T - 1)
        mine = offsets.view(self.world, -1)[self.rank]  # (accum * mb,)
        self.net.train()
        loss_sum = torch.zeros((), device=self.device)
        for i in range(self.accum):
            x, y = window_batch(self.train_data, mine[i * mb : (i + 1) * mb], self.T)
            x, y = x.to(self.device), y.to(self.device)
            sync = not self.ddp or i == self.accum - 1
            with (contextlib.nullcontext() if sync else self.net.no_sync()), self.autocast():
                loss = self.window_loss(x, y)
            (loss / self.accum).backward()
            loss_sum += loss.detach()
        loss = self.mean_over_ranks(loss_sum / self.accum)
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"pretrain: non-finite loss ({loss}) at step {self.step + 1}; last good checkpoint kept in {self.out_dir}"
            )
        apply_gradients(self.optimizer, self.model.parameters(), pc.grad_clip)
        self.step += 1
        return loss

    def window_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss of a micro-batch whose first `n_short` windows are cut into pieces."""
        k, S = self.n_short, self.S
        if k == 0 or S == self.T:
            return self.net(x, y)[1]
        _, short = self.net(x[:k].reshape(-1, S), y[:k].reshape(-1, S))
        if k == len(x):
            return short
        _, long = self.net(x[k:], y[k:])
        return (k * short + (len(x) - k) * long) / len(x)  # every window holds T tokens

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Validation loss on whole windows and on the same windows cut into short_block pieces."""
        self.net.eval()
        mb = self.pc.micro_batch_size
        mine = self.val_offsets.view(-1, mb)[self.rank :: self.world]
        total = torch.zeros(2, device=self.device)
        for offs in mine:
            x, y = window_batch(self.val_data, offs, self.T)
            x, y = x.to(self.device), y.to(self.device)
            with self.autocast():
                _, loss = self.net(x, y)
                _, short = self.net(x.reshape(-1, self.S), y.reshape(-1, self.S)) if self.S < self.T else (None, loss)
            total += torch.stack([loss.float(), short.float()])
        total = total / max(1, len(mine))
        return self.mean_over_ranks(total[0]), self.mean_over_ranks(total[1])

    def icl(self):
        """The ICL score and loss by position on val.bin (held-out documents; never train.bin), seeded by `seed`."""
        ic = self.pc.icl
        return position_loss(self.model, self.val_data, self.meta["eos_id"], self.T, windows=ic.windows, early=ic.early,
                             late=ic.late, seed=self.cfg.seed, batch_size=ic.batch_size, autocast=self.autocast)

    def save(self, metrics: dict, final: bool = False) -> None:
        """The final checkpoint to out_dir; one along the way to the unfinished run's folder."""
        if not self.master:
            return
        meta = {
            **self.resume.meta(),
            "stage": "pretrain",
            "step": self.step,
            "metrics": metrics,
            "tokens_seen": self.step * self.pc.batch_size * self.T,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        state = {
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "history": self.history,
            "rng_cpu": torch.get_rng_state(),
        }
        save_checkpoint(self.out_dir if final else self.resume.folder, self.model, meta,
                        tokenizer_path=self.data_dir / "tokenizer.json", trainer_state=state)
        if final:
            self.resume.finish()


CURVE = ("step", "train_loss", "val_loss", "val_loss_short")  # the curve file's columns
POSITIONS = ("position", "loss", "loss_long")  # the position file's columns: a range's first position, its mean val loss


def icl_metrics(pl) -> dict:
    """The ICL entries of metrics/pretrain.json (`icl_score_long` None when no document is long enough)."""
    return {"icl_score": pl.score, "icl_windows": float(pl.windows), "icl_score_long": pl.score_long,
            "icl_long_docs": float(pl.long_docs), "icl_long_windows": float(pl.windows_long)}


def position_rows(pl, n: int) -> list[dict]:
    """The loss by position in `n` ranges: all windows, and windows inside one long document."""
    long = dict(buckets(pl.curve_long, n)) if pl.curve_long is not None else {}
    return [{"position": a, "loss": v, "loss_long": long.get(a) if math.isfinite(long.get(a, math.nan)) else None}
            for a, v in buckets(pl.curve, n)]


def plot_curve(history: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["step"] for h in history], [h["train_loss"] for h in history], label="train")
    val = [h for h in history if h.get("val_loss") is not None]
    ax.plot([h["step"] for h in val], [h["val_loss"] for h in val], "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    fig.tight_layout()
    return fig


def train(cfg, pc: PretrainConfig) -> tuple[dict[str, float], list[dict]]:
    """Run (or resume) pre-training; returns the final metrics and the logged history."""
    tr = Trainer(cfg, pc)
    tokens_per_step = pc.batch_size * tr.T
    bar = None
    # a bar on a terminal; under dvc/Prefect (a pipe) a plain line per log interval instead
    if tr.master and pc.progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=pc.max_steps, initial=tr.step, desc="pretrain", unit="step", dynamic_ncols=True)
    last = next((h for h in reversed(tr.history) if h.get("val_loss") is not None), {})
    last_val, last_short = last.get("val_loss"), last.get("val_loss_short")
    t0, tok_s, steps_timed = time.perf_counter(), 0.0, 0
    try:
        while tr.step < pc.max_steps:
            loss = tr.train_step()
            steps_timed += 1
            tok_s = steps_timed * tokens_per_step / (time.perf_counter() - t0)
            record = {"step": tr.step, "train_loss": loss}
            final = tr.step == pc.max_steps
            if (pc.eval_every and tr.step % pc.eval_every == 0) or final:
                last_val, last_short = tr.evaluate()
                record.update(val_loss=last_val, val_loss_short=last_short)
            if tr.step % max(1, pc.log_every) == 0 or "val_loss" in record or final:
                tr.history.append(record)
                if tr.master:
                    m = {"train/loss": loss, "train/lr": lr_at(tr.step - 1, pc), "train/tokens_per_s": tok_s}
                    if "val_loss" in record:
                        m.update({"val/loss": last_val, "val/ppl": math.exp(min(last_val, 50)), "val/loss_short": last_short})
                    tracking.log_metrics(m, step=tr.step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}")
            elif tr.master and pc.progress and (tr.step % max(1, pc.log_every) == 0 or final):
                val = f" val {last_val:.4f}" if "val_loss" in record else ""
                print(f"pretrain step {tr.step}/{pc.max_steps} loss {loss:.4f}{val} {tok_s:,.0f} tok/s", file=sys.stderr, flush=True)
            if pc.ckpt_every and tr.step % pc.ckpt_every == 0 and not final:
                tr.save({"train_loss": loss, "val_loss": last_val, "val_loss_short": last_short})
    finally:
        if bar is not None:
            bar.close()
    if last_val is None or last_short is None:  # resumed a finished run: nothing trained, evaluate once
        last_val, last_short = tr.evaluate()
    last_train = tr.history[-1]["train_loss"] if tr.history else float("nan")
    metrics = {
        "train_loss": last_train,
        "val_loss": last_val,
        "val_ppl": math.exp(min(last_val, 50)),
        "val_loss_short": last_short,
        "step": float(tr.step),
        "tokens_seen": float(tr.step * tokens_per_step),
        "tokens_per_s": tok_s,
        "params": float(tr.model.num_params()),
    }
    pl = None
    if tr.master:  # after training: reads the model only, draws nothing from the global RNG
        t_icl = time.perf_counter()
        pl = tr.icl()
        metrics.update(icl_metrics(pl))
        if pc.progress:
            long = "none long enough" if pl.score_long is None else f"{pl.score_long:+.4f} over {pl.windows_long}"
            print(f"pretrain ICL score {pl.score:+.4f} over {pl.windows} val windows (long documents: {long}) "
                  f"in {time.perf_counter() - t_icl:.1f} s", file=sys.stderr, flush=True)
    tr.save(metrics, final=True)
    if tr.master:
        atomic_write_json(pc.metrics_file, metrics)
        atomic_write_text(pc.curve_file, curve_csv(tr.history, CURVE))
        atomic_write_text(pc.position_loss_file, curve_csv(position_rows(pl, pc.icl.buckets), POSITIONS))
    if tr.ddp:
        dist.barrier()
        dist.destroy_process_group()
    return metrics, tr.history


def run(cfg) -> dict[str, float]:
    pc: PretrainConfig = OmegaConf.to_object(cfg.pretrain)
    master = int(os.environ.get("RANK", "0")) == 0
    ctx = tracking.stage_run(cfg, "pretrain", sections=["model", "pretrain", "seed"]) if master else contextlib.nullcontext()
    with ctx:
        out, history = train(cfg, pc)
        if master:
            tracking.log_metrics({f"final/{k}": v for k, v in out.items() if v is not None})
            if history:
                tracking.log_figure(plot_curve(history), "loss_curve.png")
            tracking.log_artifact(pc.position_loss_file)
            if cfg.tracking.log_checkpoints:
                tracking.log_checkpoint(pc.out_dir)
    return out if master else {}


if __name__ == "__main__":
    stage_main(run)
