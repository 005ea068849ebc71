"""finetune stage: GPT-1 §3.2-3.3, supervised fine-tuning with task-specific input transforms.

    python -m tasks.finetune finetune.task=sentiment           # one task, the init x lm_coef grid
    python -m tasks.finetune finetune.task=story_cloze finetune.ablations.init=[]   # main setting only
    python -m tasks.finetune experiment=smoke finetune.task=sentiment finetune.epochs=1  # tiny CPU run

Reads the pre-trained checkpoint (`pretrained_dir`, with its tokenizer.json) and one labelled
task folder `<data_dir>/tasks/<task>/` (task.json + train/val/test.jsonl, the data stage's
contract; user CSVs are normalised into it by the data stage). Input transforms, with the
reserved tokens S=<|start|>, D=<|delim|>, E=<|extract|>:

    classification   S text E
    entailment       S premise D hypothesis E
    similarity       S a D b E  and  S b D a E; the two extract states are added (model/heads.py)
    multiple_choice  S context D answer_i E  for every answer; one score each, softmax over answers

Long inputs: a sequence may hold `max_len` tokens (default the model's block_size). The
special tokens and the hypothesis / answer are always kept whole; the text, premise or
context loses tokens from its LEFT (its start), keeping the end that sits next to the
hypothesis, the answer or <|extract|>. Similarity has two free texts: each keeps at least
half of the room and the longer one gives up the rest, the same in both orders. A row whose
hypothesis or answer alone does not fit is an InputError. Truncated rows (all splits) are
counted in the metrics and logged to MLflow.

Objective: L3 = L2 + lm_coef * L1, L2 the task cross-entropy, L1 the LM loss on the same
sequences (not computed at all when lm_coef = 0). AdamW, linear warm-up over
`warmup_fraction` of the steps then linear decay to 0 (the paper's schedule), dropout on the
classifier input. Validation accuracy is logged every epoch; the reported numbers are those
of the FINAL epoch (no selection on val, so test is untouched by any choice).

One invocation runs the main setting (`init`, `lm_coef`) and every other setting of the
`ablations` grid (init x lm_coef), each with the same seed, data order and head init. Writes
`<out_dir>/<task>/` (checkpoint of the main setting; the head in heads.safetensors, its
config under meta["head"]), `<metrics_dir>/<task>.json` =
{task: {init: {"lm<λ>": {val_acc, test_acc, [val_macro_f1, test_macro_f1,] truncated}}}} and
`<metrics_dir>/<task>.items.json` = {"n": test rows, "correct": {name: "0110..."}}: per test row, in
the file's order, 1 where it is right, for every setting ("<init> lm<λ>") and for the bars GPT-1's
fine-tuning must clear, scored on these same rows (tasks/zeroshot.py): "baseline", the word
baseline fit on the train split (`data/raw/stats.json`'s number), and "zero-shot", the pre-trained
checkpoint prompted with `prompt_eval.tasks.<task>` at k=0 ("-": a query too long for the window,
skipped; no entry for a task without a template of its name). finetune_report pairs them.
MLflow: the stage run `finetune/<task>` holds one nested child run per setting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from model.checkpoint import load_checkpoint, save_checkpoint
from model.gpt import GPT
from model.heads import TaskHead, TaskModel
from model.tokenizer import Tokenizer, TokenizerError
from model.train import optimizer_step, set_lr, warmup_linear, warmup_steps
from tasks import tracking
from tasks.common import InputError, atomic_write_json, read_json, read_jsonl, resolve_device, torch_threads
from tasks.config import stage_main
from tasks.contracts import TASK_FIELDS as TASK_TYPES  # the data contract: task type -> text fields of a row
from tasks.schema import AblationGrid, FinetuneConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)
from tasks.world.baselines import word_correct
from tasks.zeroshot import zero_shot_correct

SPLITS = ("train", "val", "test")



# --- the task data -----------------------------------------------------------------------------


@dataclass
class LabelledTask:
    name: str
    type: str
    labels: list | None  # classification-style tasks
    n_choices: int | None  # multiple_choice
    dir: Path

    @property
    def head_kind(self) -> str:
        return "choice" if self.type == "multiple_choice" else "classify"

    @property
    def n_out(self) -> int:
        return 1 if self.type == "multiple_choice" else len(self.labels)


def class_key(v) -> str:
    """Labels compare by JSON value and type: 1, "1" and true are different labels."""
    return json.dumps(v)


def load_task(data_dir: str | Path, name: str) -> LabelledTask:
    folder = Path(data_dir) / "tasks" / name
    path = folder / "task.json"
    spec = read_json(path, f"task {name!r}; is it written by the data stage?")
    kind = spec.get("type")
    if kind not in TASK_TYPES:
        raise InputError(f"{path}: unknown task type {kind!r} (expected one of {', '.join(TASK_TYPES)})")
    labels = n_choices = None
    if kind == "multiple_choice":
        n_choices = spec.get("n_choices")
        if not isinstance(n_choices, int) or isinstance(n_choices, bool) or n_choices < 2:
            raise InputError(f"{path}: 'n_choices' must be an integer >= 2, got {n_choices!r}")
    else:
        labels = spec.get("labels")
        if not isinstance(labels, list) or len(labels) < 2:
            raise InputError(f"{path}: 'labels' must be a list of at least 2 labels, got {labels!r}")
        if not all(isinstance(v, (str, int)) for v in labels) or len({class_key(v) for v in labels}) != len(labels):
            raise InputError(f"{path}: 'labels' must be distinct strings or integers, got {labels!r}")
    return LabelledTask(name=name, type=kind, labels=labels, n_choices=n_choices, dir=folder)


def read_split(task: LabelledTask, split: str) -> tuple[list[dict], list[int]]:
    """Rows of one split and their label indices; any malformed row is an InputError naming it."""
    path = task.dir / f"{split}.jsonl"
    rows = read_jsonl(path)
    if not rows:
        raise InputError(f"{path}: no rows")
    index = {class_key(v): i for i, v in enumerate(task.labels or [])}
    y = []
    for i, row in enumerate(rows, start=1):
        for f in TASK_TYPES[task.type]:
            if f == "choices":
                ch = row.get(f)
                if not isinstance(ch, list) or not all(isinstance(c, str) for c in ch):
                    raise InputError(f"{path}: row {i}: 'choices' must be a list of strings")
                if len(ch) != task.n_choices:
                    raise InputError(f"{path}: row {i}: {len(ch)} choices, task.json declares n_choices={task.n_choices}")
            elif not isinstance(row.get(f), str):
                raise InputError(f"{path}: row {i}: missing string field {f!r} (a {task.type} row)")
        label = row.get("label")
        if task.type == "multiple_choice":
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < task.n_choices:
                raise InputError(f"{path}: row {i}: label {label!r} is not an answer index in 0..{task.n_choices - 1}")
            y.append(label)
        else:
            if class_key(label) not in index:
                raise InputError(f"{path}: row {i}: label {label!r} is not one of task.json's labels {task.labels}")
            y.append(index[class_key(label)])
    return rows, y


# --- input transforms --------------------------------------------------------------------------


@dataclass
class Specials:
    start: int
    delim: int
    extract: int
    pad: int

    @classmethod
    def of(cls, tok: Tokenizer) -> Specials:
        return cls(tok.start_id, tok.delim_id, tok.extract_id, tok.pad_id)


def keep_end(ids: list[int], n: int) -> list[int]:
    """The last `n` tokens of `ids` (truncation from the left)."""
    return ids[len(ids) - n :] if len(ids) > n else ids


class TooLong(ValueError):
    """The part of a row that is never truncated does not fit in max_len."""


def transform(kind: str, fields: list, sp: Specials, max_len: int) -> tuple[list[list[int]], bool]:
    """Token ids of one row -> (its views, whether any view was truncated). `fields` are the
    encoded text fields in TASK_TYPES order (choices: a list of encoded answers)."""
    S, D, E = sp.start, sp.delim, sp.extract
    if kind == "classification":
        (text,) = fields
        t = keep_end(text, max_len - 2)
        return [[S, *t, E]], len(t) < len(text)
    if kind == "entailment":
        premise, hyp = fields
        room = max_len - 3 - len(hyp)
        if room < 0:
            raise TooLong(f"hypothesis of {len(hyp)} tokens does not fit max_len={max_len}")
        p = keep_end(premise, room)
        return [[S, *p, D, *hyp, E]], len(p) < len(premise)
    if kind == "similarity":
        a, b = fields
        room = max_len - 3
        half = room // 2
        # symmetric in (a, b): each keeps at least half the room, the longer one gives up the rest
        na, nb = min(len(a), max(half, room - len(b))), min(len(b), max(half, room - len(a)))
        a2, b2 = keep_end(a, na), keep_end(b, nb)
        return [[S, *a2, D, *b2, E], [S, *b2, D, *a2, E]], (na, nb) != (len(a), len(b))
    if kind == "multiple_choice":
        context, answers = fields
        views, cut = [], False
        for ans in answers:
            room = max_len - 3 - len(ans)
            if room < 0:
                raise TooLong(f"an answer of {len(ans)} tokens does not fit max_len={max_len}")
            c = keep_end(context, room)
            cut |= len(c) < len(context)
            views.append([S, *c, D, *ans, E])
        return views, cut
    raise InputError(f"unknown task type {kind!r}")


@dataclass
class Encoded:
    views: list[list[list[int]]]  # example -> view -> token ids
    y: list[int]
    truncated: int  # rows with at least one truncated view


def encode_split(task: LabelledTask, split: str, tok: Tokenizer, sp: Specials, max_len: int, limit: int = -1) -> Encoded:
    rows, y = read_split(task, split)
    if limit > 0:
        rows, y = rows[:limit], y[:limit]
    names = TASK_TYPES[task.type]
    enc = {}
    for f in names:
        if f == "choices":
            flat = tok.encode_batch([c for r in rows for c in r[f]])
            k = task.n_choices
            enc[f] = [flat[i * k : (i + 1) * k] for i in range(len(rows))]
        else:
            enc[f] = tok.encode_batch([r[f] for r in rows])
    views, truncated = [], 0
    for i in range(len(rows)):
        try:
            v, cut = transform(task.type, [enc[f][i] for f in names], sp, max_len)
        except TooLong as e:
            raise InputError(f"{task.dir / (split + '.jsonl')}: row {i + 1}: {e}") from None
        views.append(v)
        truncated += cut
    return Encoded(views, y, truncated)


def collate(views: list[list[list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a batch of examples -> idx (B, V, T), lengths (B, V)."""
    T = max(len(s) for ex in views for s in ex)
    idx = torch.full((len(views), len(views[0]), T), pad_id, dtype=torch.long)
    lengths = torch.tensor([[len(s) for s in ex] for ex in views], dtype=torch.long)
    for b, ex in enumerate(views):
        for v, s in enumerate(ex):
            idx[b, v, : len(s)] = torch.tensor(s, dtype=torch.long)
    return idx, lengths


# --- training and evaluation -------------------------------------------------------------------


def lm_key(lm_coef: float) -> str:
    return f"lm{float(lm_coef)!r}"  # 0.5 -> lm0.5, 0 -> lm0.0


def settings(fc: FinetuneConfig) -> list[tuple[str, float]]:
    """The main setting first, then the rest of the init x lm_coef grid."""
    main = (fc.init, float(fc.lm_coef))
    grid = [(i, float(c)) for i, c in itertools.product(fc.ablations.init, fc.ablations.lm_coef)]
    out = [main] + [s for s in grid if s != main]
    return list(dict.fromkeys(out))


def lr_at(step: int, total: int, fc: FinetuneConfig) -> float:
    """Linear warm-up over warmup_fraction of the steps, then linear decay to 0."""
    return warmup_linear(step, total, warmup_steps(fc.warmup_fraction, total), fc.lr)


def macro_f1(pred: torch.Tensor, y: torch.Tensor, k: int) -> float:
    f1s = []
    for c in range(k):
        tp = ((pred == c) & (y == c)).sum().item()
        denom = (pred == c).sum().item() + (y == c).sum().item()
        f1s.append(2 * tp / denom if denom else 0.0)
    return sum(f1s) / k


@torch.no_grad()
def predict(model: TaskModel, data: Encoded, pad_id: int, batch_size: int, device: str) -> torch.Tensor:
    """Argmax prediction for every example of `data`, in its order."""
    model.eval()
    order = sorted(range(len(data.y)), key=lambda i: max(map(len, data.views[i])))  # less padding
    pred = torch.empty(len(order), dtype=torch.long)
    for s in range(0, len(order), batch_size):
        ids = order[s : s + batch_size]
        idx, lengths = collate([data.views[i] for i in ids], pad_id)
        logits, _ = model(idx.to(device), lengths.to(device))
        pred[ids] = logits.argmax(-1).cpu()
    return pred


def scores(pred: torch.Tensor, y: list[int], n_labels: int | None) -> dict:
    """Accuracy (+ macro-F1 when n_labels is given) of predictions against labels."""
    y = torch.tensor(y)
    out = {"acc": (pred == y).float().mean().item()}
    if n_labels is not None:
        out["macro_f1"] = macro_f1(pred, y, n_labels)
    return out


def evaluate(model: TaskModel, data: Encoded, pad_id: int, batch_size: int, device: str, n_labels: int | None) -> dict:
    """Accuracy (+ macro-F1 when n_labels is given) of argmax predictions."""
    return scores(predict(model, data, pad_id, batch_size, device), data.y, n_labels)


def build_model(init: str, base: GPT, task: LabelledTask, fc: FinetuneConfig, device: str, specials: tuple[int, ...] = ()) -> TaskModel:
    if init == "pretrain":
        gpt = GPT(base.config)
        gpt.load_state_dict(base.state_dict())
        if fc.special_init == "mean" and specials:
            # the specials never occur in the corpus: pre-training only pushed their (tied) rows away
            # as never-predicted outputs; start them where an ordinary token's input embedding sits
            with torch.no_grad():
                w = gpt.transformer.wte.weight
                text = torch.ones(w.shape[0], dtype=torch.bool)
                text[list(specials)] = False
                w[list(specials)] = w[text].mean(0)
    else:
        torch.manual_seed(fc.seed)
        gpt = GPT(base.config)
    torch.manual_seed(fc.seed + 1)  # the same head init in every setting
    head = TaskHead(base.config.n_embd, task.head_kind, task.n_out, fc.clf_dropout)
    return TaskModel(gpt, head).to(device)


def train_setting(
    fc: FinetuneConfig, task: LabelledTask, data: dict[str, Encoded], base: GPT, pad_id: int, init: str, lm_coef: float, device: str,
    specials: tuple[int, ...] = (),
) -> tuple[TaskModel, dict, list[bool]]:
    """Fine-tune one (init, lm_coef) setting; returns the model, its final val/test metrics and
    whether it is right on each test row (in the file's order)."""
    model = build_model(init, base, task, fc, device, specials)
    opt = model.gpt.configure_optimizers(fc.weight_decay, fc.lr, (0.9, 0.999), "cuda" if device.startswith("cuda") else "cpu")
    opt.add_param_group({"params": [model.head.proj.weight], "weight_decay": fc.weight_decay})
    opt.add_param_group({"params": [model.head.proj.bias], "weight_decay": 0.0})
    train = data["train"]
    n = len(train.y)
    steps_per_epoch = math.ceil(n / fc.batch_size)
    total = fc.epochs * steps_per_epoch
    g = torch.Generator().manual_seed(fc.seed)
    y_all = torch.tensor(train.y)
    n_labels = None if task.type == "multiple_choice" else len(task.labels)
    step, t0 = 0, time.perf_counter()
    for epoch in range(1, fc.epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=g).tolist()
        l2_sum = l1_sum = 0.0
        for s in range(0, n, fc.batch_size):
            ids = perm[s : s + fc.batch_size]
            idx, lengths = collate([train.views[i] for i in ids], pad_id)
            set_lr(opt, lr_at(step, total, fc))
            logits, l1 = model(idx.to(device), lengths.to(device), lm=lm_coef > 0)
            l2 = F.cross_entropy(logits, y_all[ids].to(device))
            loss = l2 + lm_coef * l1 if l1 is not None else l2
            optimizer_step(loss, opt, model.parameters(), fc.grad_clip,
                           f"finetune {task.name} ({init}, lm_coef={lm_coef}): non-finite loss at step {step + 1}; lower finetune.lr")
            step += 1
            l2_sum += l2.item()
            l1_sum += l1.item() if l1 is not None else 0.0
        val = evaluate(model, data["val"], pad_id, fc.eval_batch_size, device, n_labels)
        m = {"train/task_loss": l2_sum / steps_per_epoch, "val/acc": val["acc"]}
        if lm_coef > 0:
            m["train/lm_loss"] = l1_sum / steps_per_epoch
        tracking.log_metrics(m, step=epoch)
        if fc.progress:
            extra = f" lm_loss {m['train/lm_loss']:.3f}" if lm_coef > 0 else ""
            print(
                f"finetune {task.name} {init} {lm_key(lm_coef)} epoch {epoch}/{fc.epochs}: task_loss {m['train/task_loss']:.3f}{extra}"
                f" val_acc {val['acc']:.3f} ({time.perf_counter() - t0:.1f}s)",
                file=sys.stderr,
            )
    out = {}
    for split in ("val", "test"):
        pred = predict(model, data[split], pad_id, fc.eval_batch_size, device)
        for k, v in scores(pred, data[split].y, n_labels).items():
            out[f"{split}_{k}"] = v
    return model, out, (pred == torch.tensor(data["test"].y)).tolist()


@contextlib.contextmanager
def setting_run(enabled: bool, task: str, init: str, lm_coef: float):
    """A child MLflow run nested under the stage's run (none when tracking is off)."""
    if not enabled:
        yield None
        return
    import mlflow

    name = f"{task}/{init}/{lm_key(lm_coef)}"
    tags = {"instructflow.stage": "finetune", "finetune.task": task}
    with mlflow.start_run(run_name=name, nested=True, tags=tags) as run:
        mlflow.log_params({"task": task, "init": init, "lm_coef": lm_coef})
        yield run


# --- loading -----------------------------------------------------------------------------------


def load_base(pretrained_dir: str | Path) -> tuple[GPT, Tokenizer, Path]:
    """The pre-trained GPT and its tokenizer; the tokenizer must carry GPT-1's special tokens."""
    ckpt = load_checkpoint(pretrained_dir)
    if ckpt.tokenizer_path is None:
        raise InputError(f"checkpoint {pretrained_dir}: no tokenizer.json beside the weights")
    try:
        tok = Tokenizer.load(ckpt.tokenizer_path)
        sp = Specials.of(tok)
    except TokenizerError as e:
        raise InputError(str(e)) from None
    if max(sp.start, sp.delim, sp.extract, sp.pad) >= ckpt.config.vocab_size:
        raise InputError(f"checkpoint {pretrained_dir}: special token ids exceed the model's vocabulary of {ckpt.config.vocab_size}")
    return ckpt.model, tok, ckpt.tokenizer_path


def load_finetuned(path: str | Path, device: str = "cpu") -> tuple[TaskModel, dict, Tokenizer]:
    """A checkpoint written by this stage -> (TaskModel in eval mode, meta, tokenizer)."""
    ckpt = load_checkpoint(path, device=device)
    if "head" not in ckpt.meta or not ckpt.extra_tensors:
        raise InputError(f"checkpoint {path}: no task head (not written by the finetune stage)")
    head = TaskHead.from_tensors(ckpt.meta["head"], ckpt.extra_tensors)
    model = TaskModel(ckpt.model, head).to(device).eval()
    if ckpt.tokenizer_path is None:
        raise InputError(f"checkpoint {path}: no tokenizer.json beside the weights")
    return model, ckpt.meta, Tokenizer.load(ckpt.tokenizer_path)


# --- the stage ---------------------------------------------------------------------------------


def finetune(cfg, fc: FinetuneConfig) -> dict:
    """Run every setting for `fc.task`; write the checkpoint and metrics; return the nested metrics."""
    device = resolve_device(cfg.device)
    todo = settings(fc)
    task = load_task(fc.data_dir, fc.task)
    base, tok, tok_path = load_base(fc.pretrained_dir)
    block = base.config.block_size
    max_len = block if fc.max_len < 0 else fc.max_len
    if max_len > block or max_len < 4:
        raise InputError(f"finetune.max_len={fc.max_len}: must be between 4 and the model's block_size={block} (-1 = block_size)")
    sp = Specials.of(tok)
    data = {s: encode_split(task, s, tok, sp, max_len, fc.max_train_rows if s == "train" else -1) for s in SPLITS}
    truncated = sum(d.truncated for d in data.values())
    tracking.log_metrics({"truncated": truncated, **{f"truncated/{s}": d.truncated for s, d in data.items()}})
    correct = bars(cfg, task, base.to(device), tok)
    import mlflow

    enabled = mlflow.active_run() is not None
    results: dict[str, dict] = {}
    for k, (init, lm_coef) in enumerate(todo):
        with setting_run(enabled, task.name, init, lm_coef):
            model, m, correct[f"{init} {lm_key(lm_coef)}"] = train_setting(fc, task, data, base, sp.pad, init, lm_coef, device,
                                                                          (sp.start, sp.delim, sp.extract))
            m["truncated"] = truncated
            tracking.log_metrics({f"final/{key}": v for key, v in m.items()})
        results.setdefault(init, {})[lm_key(lm_coef)] = m
        tracking.log_metrics({f"{init}.{lm_key(lm_coef)}.{key}": v for key, v in m.items()})
        if k == 0:  # the main setting
            meta = {
                "stage": "finetune",
                "task": task.name,
                "type": task.type,
                "labels": task.labels,
                "n_choices": task.n_choices,
                "head": model.head.config(),
                "init": init,
                "lm_coef": lm_coef,
                "max_len": max_len,
                "metrics": m,
                "config": OmegaConf.to_container(cfg, resolve=True),
            }
            dest = Path(fc.out_dir) / task.name
            save_checkpoint(dest, model.gpt, meta, tokenizer_path=tok_path, extra_tensors=model.head.tensors())
            if cfg.tracking.log_checkpoints:
                tracking.log_checkpoint(dest)
    metrics = {task.name: results}
    atomic_write_json(Path(fc.metrics_dir) / f"{task.name}.json", metrics)
    items = {"n": len(data["test"].y), "correct": {k: "".join("-" if h is None else "01"[h] for h in v) for k, v in correct.items()}}
    atomic_write_json(Path(fc.metrics_dir) / f"{task.name}.items.json", items)
    return metrics


def bars(cfg, task: LabelledTask, base: GPT, tok: Tokenizer) -> dict[str, list[bool | None]]:
    """Per test row, whether each bar fine-tuning must clear is right: "baseline" (the word
    baseline fit on the train split) and "zero-shot" (the pre-trained model prompted with the
    prompt_eval template of the task's name; none without one; None: query too long, skipped)."""
    test, train = read_split(task, "test")[0], read_split(task, "train")[0]
    name, out = word_correct(task.type, train, test)
    hits = {"baseline": out}
    zs = zero_shot_correct(base, tok, task.name, test, OmegaConf.to_object(cfg.prompt_eval))
    if zs is not None:
        hits["zero-shot"] = zs
    m = {f"{k}/acc": sum(h is True for h in v) / max(1, sum(h is not None for h in v)) for k, v in hits.items()}
    tracking.log_metrics(m)
    if cfg.finetune.progress:
        print(f"finetune {task.name} bars on the test rows: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()) + f" (baseline: {name})",
              file=sys.stderr)
    return hits


def task_epochs(fc: FinetuneConfig) -> FinetuneConfig:
    """`fc` with `epochs` set to `task_epochs[task]` when the task has its own count."""
    return dataclasses.replace(fc, epochs=fc.task_epochs.get(fc.task, fc.epochs))


def run(cfg) -> dict[str, float]:
    fc: FinetuneConfig = task_epochs(OmegaConf.to_object(cfg.finetune))
    with torch_threads(fc.threads):
        with tracking.stage_run(cfg, "finetune", sections=["finetune"], run_name=f"finetune/{fc.task}"):
            metrics = finetune(cfg, fc)
    return tracking.flatten(metrics)


if __name__ == "__main__":
    stage_main(run)
