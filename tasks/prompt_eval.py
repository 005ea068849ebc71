"""prompt_eval stage: GPT-2 / GPT-3 zero-, one- and few-shot evaluation of any checkpoint, no gradients.

    python -m tasks.prompt_eval                                    # models/pretrain on conf/ defaults
    python -m tasks.prompt_eval prompt_eval.model=sft prompt_eval.shots=[0,1,4,8]
    python -m tasks.prompt_eval prompt_eval.model=/path/to/hf-gpt2 # a Hugging Face GPT-2 folder
    python -m tasks.prompt_eval experiment=smoke prompt_eval.too_long=skip prompt_eval.max_items=20  # seconds

Each task under `prompt_eval.data_dir/<task>/` is written as text by its template in
conf/prompt_eval.yaml: an optional instruction, k solved examples from the train split, then the
query. The model sees only that text: no special tokens, no new tokens, no weight updates.

- choice tasks: each choice is scored by the summed log-probability of its tokens after the
  context (`acc`), and by that sum divided by the choice's length in characters (`acc_norm`, as
  lm-evaluation-harness does). Batches of whole items; each context runs once into a KV cache
  that all of the item's choices continue from.
- generate tasks: greedy decoding (KV cache, left-padded batches) of up to `max_new_tokens`, cut
  at the first stop sequence, scored by exact match with the answer after `normalize_answer`
  (`acc`); words every answer shares ("It is") belong in the template, not the target.
- `verbalizer` maps an answer to the words that stand for it (yes -> "In other words:"), so a
  task can be asked in the shape the pre-training text uses (GPT-2's zero-shot recipe).
- examples: drawn per test item from the train split by an RNG seeded with (seed, task, item);
  train rows whose query text equals the item's are never drawn. The k examples are the first k
  of one draw, so the 1-shot example is also the first of the 4-shot ones (a smoother k curve).
- long contexts: when context + continuation exceed the model's window, whole examples are
  dropped, oldest (leftmost) first, then the instruction; such an item counts as `truncated`.
  If the query and its continuation alone do not fit, that is an InputError, or with
  `too_long=skip` the item is left out at every k and counted as `skipped`.
"""

from __future__ import annotations

import math
import random
import re
import string
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from model import GPT, KVCache, generate, from_pretrained
from model.tokenizer import SPECIALS, Tokenizer, TokenizerError
from tasks import tracking
from tasks.common import InputError, atomic_write_json, atomic_write_text, read_json, read_jsonl, resolve_device, torch_threads
from tasks.config import stage_main
from tasks.schema import PromptTemplate, PromptEvalConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)

KINDS = ("choice", "generate")
TOO_LONG = ("error", "skip")



class QueryTooLong(InputError):
    """A test item's query and continuation alone exceed the model's window."""


@dataclass
class Task:
    name: str
    kind: str  # choice | generate
    spec: PromptTemplate
    train: list[dict]
    test: list[dict]


# --- tasks and prompts ---------------------------------------------------------------------------


def template_fields(text: str, key: str) -> set[str]:
    """The field names a str.format template uses ({a.b} and {a[0]} count as a)."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as e:
        raise InputError(f"{key}: not a valid template ({e})") from None
    if "" in names or any(n[:1].isdigit() for n in names):
        raise InputError(f"{key}: positional fields ({{}}, {{0}}) are not allowed; name a field")
    return {re.split(r"[.\[]", n)[0] for n in names}


def load_task(data_dir: Path, name: str, spec: PromptTemplate) -> Task:
    """Read task.json and both splits; check the template against the task's fields and rows."""
    folder = data_dir / (spec.task or name)
    meta_path = folder / "task.json"
    meta = read_json(meta_path, f"run the data stage, or drop {name} from prompt_eval.select")
    kind, fields = meta.get("kind"), meta.get("fields")
    if kind not in KINDS:
        raise InputError(f"{meta_path}: kind={kind!r}, expected one of {', '.join(KINDS)}")
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise InputError(f"{meta_path}: fields must be a list of field names")
    key = f"prompt_eval.tasks.{name}"
    if not spec.template.strip():
        raise InputError(f"{key}.template is empty")
    used: set[str] = set()
    for part, allowed in (("template", fields), ("target", [*fields, "answer"]), ("instruction", [])):
        for f in sorted(template_fields(getattr(spec, part), f"{key}.{part}")):
            if f not in allowed:
                raise InputError(
                    f"{key}.{part} names the field {{{f}}}, which task {folder.name} lacks "
                    f"(it may use: {', '.join(allowed) or 'no fields'})"
                )
            used.add(f)
    if kind == "generate" and (not spec.stop or spec.max_new_tokens < 1):
        raise InputError(f"{key}: a generate task needs at least one stop sequence and max_new_tokens >= 1")
    splits = {}
    for split in ("train", "test"):
        path = folder / f"{split}.jsonl"
        rows = read_jsonl(path)
        for i, row in enumerate(rows, start=1):
            missing = sorted(f for f in used | {"answer"} if f not in row)
            if missing:
                raise InputError(f"{path}: row {i} lacks {', '.join(missing)}")
            if kind == "choice":
                ch = row.get("choices")
                if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) for c in ch):
                    raise InputError(f"{path}: row {i}: choices must be a list of at least two strings")
                if row["answer"] not in ch:
                    raise InputError(f"{path}: row {i}: answer {row['answer']!r} is not one of its choices")
        splits[split] = rows
    if not splits["test"]:
        raise InputError(f"{folder / 'test.jsonl'}: no rows")
    return Task(name, kind, spec, splits["train"], splits["test"])


def query_text(spec: PromptTemplate, row: dict) -> str:
    return spec.template.format_map(row)


def target_text(spec: PromptTemplate, row: dict, answer: str) -> str:
    return spec.target.format_map({**row, "answer": spec.verbalizer.get(answer, answer)})


def example_text(spec: PromptTemplate, row: dict) -> str:
    """A solved example: the query followed by its gold target."""
    return query_text(spec, row) + target_text(spec, row, row["answer"])


def draw_examples(task: Task, item: int, k: int, seed: int) -> list[int]:
    """Train-row indices of the k examples shown before test item `item`: same seed, same rows.

    Rejection sampling from one RNG seeded by (seed, data task, item): a draw of k is a prefix of a
    draw of k + 1. Train rows whose query text equals the test item's are excluded.
    """
    if k == 0:
        return []
    path = f"{task.name}/train.jsonl"
    if k > len(task.train):
        raise InputError(f"prompt_eval.shots: k={k} exceeds the {len(task.train)} rows of {path}")
    query = query_text(task.spec, task.test[item])
    excluded = {j for j, r in enumerate(task.train) if query_text(task.spec, r) == query}
    if k > len(task.train) - len(excluded):
        raise InputError(
            f"prompt_eval.shots: k={k} exceeds the {len(task.train) - len(excluded)} rows of {path} "
            f"that differ from test item {item + 1}"
        )
    # str seeds hash with sha512: stable across runs; two templates of one data task see the same examples
    rng = random.Random(f"{seed}/{task.spec.task or task.name}/{item}")
    out: list[int] = []
    while len(out) < k:
        j = rng.randrange(len(task.train))
        if j not in excluded:
            excluded.add(j)
            out.append(j)
    return out


def fit_context(tok: Tokenizer, task: Task, item: int, examples: list[dict], room: int, need: str) -> tuple[list[int], int]:
    """Token ids of instruction + examples + query in at most `room` tokens, and the examples kept.

    Drops whole examples oldest-first, then the instruction; raises when the query alone is too long.
    """
    spec = task.spec
    query = query_text(spec, task.test[item]).rstrip(" ")  # a trailing space belongs to the continuation
    shots = [example_text(spec, e) for e in examples]
    head = [spec.instruction] if spec.instruction else []
    candidates = [(head + shots[d:], len(shots) - d) for d in range(len(shots) + 1)]
    if head:
        candidates.append(([], 0))
    for parts, kept in candidates:
        text = spec.example_separator.join([*parts, query])
        for special in SPECIALS:
            if special in text:
                raise InputError(f"task {task.name}: a prompt contains the special token {special}; prompts never use them")
        ids = tok.encode(text) or [tok.eos_id]  # an empty context is conditioned on <|endoftext|>, as GPT-2
        if len(ids) <= room:
            return ids, kept
    raise QueryTooLong(
        f"task {task.name}, test item {item + 1}: the query alone is {len(ids)} tokens, but beside {need} "
        f"only {max(room, 0)} fit the model's window: shorten prompt_eval.tasks.{task.name}.template "
        "or use a model with a larger block_size (or set prompt_eval.too_long=skip)"
    )


# --- scoring -------------------------------------------------------------------------------------


def pack_items(contexts: list[list[int]], choices: list[list[list[int]]], batch_size: int) -> list[list[int]]:
    """Item indices in batches of at most `batch_size` choice rows (an item is never split).

    Longest first, so neighbours pad little.
    """
    order = sorted(range(len(contexts)), key=lambda i: -(len(contexts[i]) + sum(map(len, choices[i]))))
    batches, cur, rows = [], [], 0
    for i in order:
        if cur and rows + len(choices[i]) > batch_size:
            batches.append(cur)
            cur, rows = [], 0
        cur.append(i)
        rows += len(choices[i])
    return batches + [cur] if cur else batches


@torch.inference_mode()
def score_choices(model: GPT, contexts: list[list[int]], choices: list[list[list[int]]], batch_size: int) -> list[list[float]]:
    """log p(choice | context) summed over the choice's tokens, for every choice j of every item i.

    The context is computed once per item, not once per choice: the items' contexts run as one
    left-padded batch into a KV cache; then each item's choices (without their last token) run
    side by side in one row after its context, with an attention mask that lets every choice
    token see the context and the earlier tokens of its own choice only, at the positions it
    would have right after the context. Nothing is copied per choice. Only the positions that
    predict a choice token go through lm_head, so a 50k vocabulary costs little memory.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = [[0.0] * len(c) for c in choices]
    for items in pack_items(contexts, choices, batch_size):
        ctxs = [contexts[i] for i in items]
        B, P = len(items), max(map(len, ctxs))
        x = torch.zeros((B, P), dtype=torch.long)  # pad id 0: masked out
        mask = torch.zeros((B, P), dtype=torch.bool)
        for b, c in enumerate(ctxs):
            x[b, P - len(c) :], mask[b, P - len(c) :] = torch.tensor(c), True
        # second pass layout: row b holds choice 0[:-1], choice 1[:-1], ... of item b
        starts = [[0] * len(choices[i]) for i in items]  # where each choice's tokens begin in its row
        S = 0
        for b, i in enumerate(items):
            o = 0
            for j, c in enumerate(choices[i]):
                starts[b][j], o = o, o + len(c) - 1
            S = max(S, o)
        cache = KVCache(model.config, B, P + S, device=device, dtype=dtype)
        padded = not bool(mask.all())
        h = model.hidden_states(x.to(device), attention_mask=mask.to(device) if padded else None, kv_cache=cache)[:, -1:]
        if S > 0:
            y = torch.zeros((B, S), dtype=torch.long)
            pos = torch.zeros((B, S), dtype=torch.long)
            seg = torch.full((B, S), -1, dtype=torch.long)  # which choice each column belongs to; -1 = padding
            for b, i in enumerate(items):
                n = len(ctxs[b])
                for j, c in enumerate(choices[i]):
                    o, m = starts[b][j], len(c) - 1
                    y[b, o : o + m] = torch.tensor(c[:-1])
                    pos[b, o : o + m] = torch.arange(n, n + m)
                    seg[b, o : o + m] = j
            causal = torch.ones((S, S), dtype=torch.bool).tril()
            own = (seg[:, :, None] == seg[:, None, :]) & causal  # (B, S, S): same choice, not later
            allowed = torch.cat([mask[:, None, :].expand(B, S, P), own], 2)[:, None]  # (B, 1, S, P + S)
            h2 = model.hidden_states(y.to(device), attention_mask=allowed.to(device), position_ids=pos.to(device), kv_cache=cache)
            h = torch.cat([h, h2], 1)  # (B, 1 + S, C): column 0 predicts every choice's first token
        rows, cols, tgt, which = [], [], [], []  # per choice token: row and column of h predicting it, its choice
        n_choices = 0
        for b, i in enumerate(items):
            for j, c in enumerate(choices[i]):
                rows += [b] * len(c)
                cols += [0] + [1 + starts[b][j] + t for t in range(len(c) - 1)]
                tgt += c
                which += [n_choices] * len(c)
                n_choices += 1
        states = h[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]  # (N, C)
        logp = F.log_softmax(model.lm_head(states).float(), dim=-1)
        logp = logp.gather(1, torch.tensor(tgt, device=device)[:, None]).squeeze(1)  # (N,)
        sums = torch.zeros(n_choices, device=device).index_add_(0, torch.tensor(which, device=device), logp)
        sums = iter(sums.tolist())
        for i in items:
            out[i] = [next(sums) for _ in choices[i]]
    return out


def cut_at_stop(text: str, stops: list[str]) -> str:
    """`text` up to (not including) the earliest stop sequence."""
    cut = min((text.find(s) for s in stops if s and s in text), default=len(text))
    return text[:cut]


def normalize_answer(s: str) -> str:
    """SQuAD's exact-match normalisation: lowercase, drop punctuation, drop a/an/the, squeeze whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in string.punctuation)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def generate_answers(model: GPT, tok: Tokenizer, prompts: list[list[int]], spec: PromptTemplate, batch_size: int) -> list[str]:
    """Greedy continuations cut at the first stop sequence; prompts of similar length share a batch."""
    eos = tok.eos_id if tok.eos_id < model.config.vocab_size else None
    out = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        res = generate(model, [prompts[i] for i in idx], spec.max_new_tokens, temperature=0.0, eos_id=eos, pad_id=0)
        for i, toks in zip(idx, res.tokens):
            out[i] = cut_at_stop(tok.decode(toks), spec.stop)
    return out


def check_ids(ids: list[int], vocab_size: int, task: str) -> None:
    if ids and max(ids) >= vocab_size:
        raise InputError(
            f"task {task}: the tokenizer produced id {max(ids)}, beyond the model's vocabulary of {vocab_size} "
            "(prompt_eval.tokenizer_path does not belong to this model)"
        )


@dataclass
class Request:
    """One test item, tokenized: the context and what follows it."""

    item: int  # index in the test split
    context: list[int]  # instruction? + examples + query, token ids
    shots: int  # examples kept (fewer than k when the context was truncated)
    targets: list[str]  # the choices' texts (choice tasks) or the gold answer (generate tasks)
    target_ids: list[list[int]]  # each choice's token ids; [] for generate tasks


def build_requests(tok: Tokenizer, task: Task, k: int, pc: PromptEvalConfig, block_size: int, vocab_size: int) -> list[Request]:
    """The first `max_items` test items at k shots, each fitted into `block_size` tokens.

    With `too_long=skip` an item whose query alone does not fit is left out (the same items at every k).
    """
    spec = task.spec
    n = len(task.test) if pc.max_items < 0 else min(pc.max_items, len(task.test))
    out = []
    for i in range(n):
        row = task.test[i]
        examples = [task.train[j] for j in draw_examples(task, i, k, pc.seed)]
        q = query_text(spec, row)
        lead = q[len(q.rstrip(" ")) :]  # a query's trailing space is scored as part of the continuation
        if task.kind == "choice":
            texts = [lead + target_text(spec, row, c) for c in row["choices"]]
            ids = tok.encode_batch(texts)
            if not all(ids):
                raise InputError(f"task {task.name}, test item {i + 1}: a choice renders to no tokens")
            longest = max(map(len, ids))
            # the last choice token is never fed to the model: context + choice - 1 must fit
            room, need = block_size + 1 - longest, f"its longest choice ({longest} tokens)"
        else:
            texts, ids = [spec.verbalizer.get(row["answer"], row["answer"])], []  # exact match is on the answer
            room, need = block_size - spec.max_new_tokens, f"max_new_tokens={spec.max_new_tokens}"
        try:
            ctx, shots = fit_context(tok, task, i, examples, room, need)
        except QueryTooLong:
            if pc.too_long == "skip":
                continue
            raise
        check_ids(ctx + [t for c in ids for t in c], vocab_size, task.name)
        out.append(Request(i, ctx, shots, texts, ids))
    return out


def evaluate_task(model: GPT, tok: Tokenizer, task: Task, k: int, pc: PromptEvalConfig) -> tuple[dict | None, list[dict], dict[int, bool]]:
    """Accuracy of one task at k shots, the first few items rendered (for inspection), and
    {test item: correct} (for paired comparisons between k).

    None when every item was skipped (`too_long=skip`): no accuracy to report.
    """
    reqs = build_requests(tok, task, k, pc, model.config.block_size, model.config.vocab_size)
    n = len(reqs)
    n_all = len(task.test) if pc.max_items < 0 else min(pc.max_items, len(task.test))
    if n == 0:
        return None, [], {}
    samples = []
    if task.kind == "choice":
        scores = score_choices(model, [r.context for r in reqs], [r.target_ids for r in reqs], pc.batch_size)
        correct = correct_norm = 0
        hits = []
        for i, (sc, r) in enumerate(zip(scores, reqs)):
            row = task.test[r.item]
            gold = row["choices"].index(row["answer"])
            pred = max(range(len(sc)), key=sc.__getitem__)  # ties: the first choice
            pred_norm = max(range(len(sc)), key=lambda j: sc[j] / len(r.targets[j]))  # per character
            hits.append(pred == gold)
            correct += pred == gold
            correct_norm += pred_norm == gold
            if i < 3:
                samples.append({"prompt": tok.decode(r.context), "choices": r.targets, "logprobs": sc, "gold": gold})
        chance = sum(1 / len(task.test[r.item]["choices"]) for r in reqs) / n
        m = {"acc": correct / n, "acc_norm": correct_norm / n, "chance": chance}
    else:
        preds = generate_answers(model, tok, [r.context for r in reqs], task.spec, pc.batch_size)
        hits = [normalize_answer(p) == normalize_answer(r.targets[0]) for p, r in zip(preds, reqs)]
        for i in range(min(3, n)):
            samples.append({"prompt": tok.decode(reqs[i].context), "generated": preds[i], "gold": reqs[i].targets[0]})
        m = {"acc": sum(hits) / n, "chance": 0.0}
    m |= {
        "n": n,
        "skipped": n_all - n,
        "truncated": sum(r.shots < k for r in reqs),
        "mean_shots": sum(r.shots for r in reqs) / n,
    }
    return m, samples, {r.item: bool(h) for r, h in zip(reqs, hits)}


def paired_gain(base: dict[int, bool], other: dict[int, bool]) -> tuple[float, float]:
    """Accuracy of `other` minus `base` over the items both scored, and the 95% half-width of
    that paired difference (normal approximation: 1.96 * sd(d_i) / sqrt(n))."""
    d = [int(other[i]) - int(base[i]) for i in base if i in other]
    if not d:
        return 0.0, 0.0
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / max(1, len(d) - 1)
    return mean, 1.96 * math.sqrt(var / len(d))


# --- model, outputs, stage -----------------------------------------------------------------------


def load_model(pc: PromptEvalConfig, device: str) -> tuple[str, GPT, Tokenizer]:
    """(result name, model in eval mode on `device`, tokenizer) for `prompt_eval.model`."""
    if pc.model in pc.checkpoints:
        name, folder = pc.model, Path(pc.checkpoints[pc.model])
        if not folder.is_dir():
            raise InputError(f"{folder}: checkpoint folder not found (run the {name} stage first)")
    else:
        folder = Path(pc.model)
        name = folder.name
        if not folder.is_dir():
            raise InputError(
                f"prompt_eval.model={pc.model}: neither a checkpoint name ({', '.join(pc.checkpoints)}) nor a folder"
            )
    model = from_pretrained(folder, dropout=0.0).to(device).float().eval()
    tok_path = Path(pc.tokenizer_path) if pc.tokenizer_path else folder / "tokenizer.json"
    if not tok_path.is_file():
        raise InputError(f"{tok_path}: tokenizer not found (set prompt_eval.tokenizer_path)")
    try:  # an HF GPT-2 tokenizer lacks our fine-tuning specials; prompts never use them anyway
        tok = Tokenizer.load(tok_path, add_missing_specials=True)
    except TokenizerError as e:
        raise InputError(str(e)) from None
    return name, model, tok


def table_rows(metrics: dict) -> list[dict]:
    """One row per (model, task, k) of a metrics file: what the flow publishes as a table artifact."""
    rows = []
    for model, tasks in metrics.items():
        for task, by_k in tasks.items():
            for key in sorted(by_k, key=lambda s: int(s[1:])):
                m = by_k[key]
                rows.append(
                    {
                        "model": model,
                        "task": task,
                        "k": int(key[1:]),
                        "acc": round(m["acc"], 4),
                        "acc_norm": round(m["acc_norm"], 4) if "acc_norm" in m else None,
                        "chance": round(m["chance"], 4),
                        "n": m["n"],
                        "skipped": m.get("skipped", 0),
                        "truncated": m.get("truncated", 0),
                        "mean_shots": round(m.get("mean_shots", int(key[1:])), 2),
                        "gain": round(m["gain"], 4) if "gain" in m else None,
                        "gain_ci95": round(m["gain_ci95"], 4) if "gain" in m else None,
                    }
                )
    return rows


def markdown_table(metrics: dict) -> str:
    """Accuracy by task (rows) and k (columns), acc_norm in brackets for choice tasks, chance beside."""
    rows = table_rows(metrics)
    ks = sorted({r["k"] for r in rows})
    top = ks[-1] if len(ks) > 1 else None  # the paired gain of the largest k over the smallest
    lines = [
        "| model | task | n | chance | " + " | ".join(f"k={k}" for k in ks)
        + (f" | k={top} − k={ks[0]} (95% CI) |" if top is not None else " |"),
        "|---|---|---:|---:|" + "---:|" * (len(ks) + (top is not None)),
    ]
    notes = []
    for model, tasks in metrics.items():
        for task in tasks:
            mine = {r["k"]: r for r in rows if r["model"] == model and r["task"] == task}
            cells = []
            for k in ks:
                r = mine.get(k)
                cells.append("–" if r is None else f"{r['acc']:.3f}" + ("" if r["acc_norm"] is None else f" ({r['acc_norm']:.3f})"))
                if r is not None and r["skipped"] and k == ks[0]:
                    notes.append(f"{model} {task}: {r['skipped']} test items skipped, their query alone overflows the window")
                if r is not None and r["truncated"]:
                    notes.append(
                        f"{model} {task} k={k}: {r['truncated']}/{r['n']} contexts truncated "
                        f"({r['mean_shots']:.2f} examples kept on average)"
                    )
            if top is not None:
                r = mine.get(top)
                cells.append("–" if r is None or r["gain"] is None else f"{r['gain']:+.3f} ± {r['gain_ci95']:.3f}")
            first = next(iter(mine.values()))
            lines.append(f"| {model} | {task} | {first['n']} | {first['chance']:.3f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("acc (acc_norm: log-likelihood per character) for choice tasks; exact match for generate tasks. "
                 "The last column: the same items' accuracy at the largest k minus the smallest, ± the 95% "
                 "half-width of the paired difference (above 0 beyond noise when the gain exceeds it).")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_curve(path: str | Path, metrics: dict) -> None:
    lines = ["model,task,k,acc,chance"] + [
        f"{r['model']},{r['task']},{r['k']},{r['acc']},{r['chance']}" for r in table_rows(metrics)
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot_curve(metrics: dict):
    """Accuracy against k, one panel per task (GPT-3 Fig. 1.2's shape); chance dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table_rows(metrics)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cols = min(4, len(tasks))
    nrows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False, sharey=True)
    for ax, task in zip(axes.flat, tasks):
        for model in metrics:
            mine = [r for r in rows if r["task"] == task and r["model"] == model]
            ks = [r["k"] for r in mine]
            line = ax.plot(ks, [r["acc"] for r in mine], "o-", label=model)[0]
            if mine and mine[0]["acc_norm"] is not None:
                ax.plot(ks, [r["acc_norm"] for r in mine], "s--", color=line.get_color(), alpha=0.5, label=f"{model} (norm)")
            ax.axhline(mine[0]["chance"], color="grey", linestyle=":", linewidth=1)
            ax.set_xticks(ks)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("k (examples in context)")
        ax.set_ylim(0, 1)
    for ax in axes.flat[len(tasks) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("accuracy")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def check_config(pc: PromptEvalConfig) -> list[str]:
    """The task names to evaluate; one-line errors for settings that cannot work."""
    if not pc.shots or any(k < 0 for k in pc.shots) or len(set(pc.shots)) != len(pc.shots):
        raise InputError(f"prompt_eval.shots={pc.shots}: need distinct k >= 0")
    if pc.batch_size < 1 or pc.max_items == 0 or pc.max_items < -1:
        raise InputError("prompt_eval: need batch_size >= 1 and max_items >= 1 (or -1 = all)")
    if pc.too_long not in TOO_LONG:
        raise InputError(f"prompt_eval.too_long={pc.too_long!r}: expected one of {', '.join(TOO_LONG)}")
    names = list(pc.select) or list(pc.tasks)
    unknown = [n for n in names if n not in pc.tasks]
    if unknown:
        raise InputError(f"prompt_eval.select names {', '.join(unknown)}, which have no template in prompt_eval.tasks")
    if not names:
        raise InputError("prompt_eval.tasks is empty: nothing to evaluate")
    return names


def evaluate(model: GPT, tok: Tokenizer, tasks: list[Task], pc: PromptEvalConfig) -> tuple[dict, dict]:
    """{task: {k<k>: metrics}} for every task and k, and the rendered samples by "task/k<k>"."""
    results, samples = {}, {}
    for task in tasks:
        first = None  # {item: correct} at the smallest k: each larger k is compared with it, item by item
        for k in sorted(pc.shots):
            t0 = time.perf_counter()
            m, samples[f"{task.name}/k{k}"], hits = evaluate_task(model, tok, task, k, pc)
            if m is None:  # the same items are skipped at every k
                print(f"prompt_eval: {task.name}: skipped, no query fits the model's window", file=sys.stderr)
                break
            if first is None:
                first = hits
            else:
                m["gain"], m["gain_ci95"] = paired_gain(first, hits)
            results.setdefault(task.name, {})[f"k{k}"] = m
            print(
                f"prompt_eval: {task.name} k={k}: acc={m['acc']:.3f} chance={m['chance']:.3f} n={m['n']} "
                f"skipped={m['skipped']} truncated={m['truncated']} ({time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
            )
    if not results:
        raise InputError("prompt_eval: every task was skipped, no query fits the model's window")
    return results, samples


def run(cfg) -> dict[str, float]:
    pc: PromptEvalConfig = OmegaConf.to_object(cfg.prompt_eval)
    names = check_config(pc)
    name, model, tok = load_model(pc, resolve_device(cfg.device))
    tasks = [load_task(Path(pc.data_dir), n, pc.tasks[n]) for n in names]
    for task in tasks:  # fail before any scoring, not after an hour of it
        if max(pc.shots) > len(task.train):
            raise InputError(f"prompt_eval.shots: k={max(pc.shots)} exceeds the {len(task.train)} rows of {task.name}/train.jsonl")
    with torch_threads(pc.threads), tracking.stage_run(cfg, "prompt_eval", sections=["prompt_eval", "seed"], run_name=f"prompt_eval {name}") as run_:
        results, samples = evaluate(model, tok, tasks, pc)
        metrics = {name: results}
        atomic_write_json(pc.metrics_file, metrics)
        atomic_write_text(pc.table_file, markdown_table(metrics))
        write_curve(pc.curve_file, metrics)
        fig = plot_curve(metrics)
        Path(pc.plot_file).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(pc.plot_file, dpi=120)
        tracking.log_figure(fig, "prompt_eval_curve.png")
        import matplotlib.pyplot as plt

        plt.close(fig)
        flat = {}
        for task, by_k in results.items():
            for key, m in by_k.items():
                flat |= {f"prompt_eval/{task}/{key}/{s}": m[s] for s in ("acc", "acc_norm", "truncated", "skipped") if s in m}
        for key in {f"k{k}" for k in pc.shots}:
            flat[f"prompt_eval/mean/{key}/acc"] = sum(by_k[key]["acc"] for by_k in results.values()) / len(results)
        if run_ is not None:
            import mlflow

            mlflow.set_tag("instructflow.model", name)
            tracking.log_metrics(flat)
            for task, by_k in results.items():  # acc against step = k: MLflow's own chart draws the k curve
                for k in sorted(pc.shots):
                    tracking.log_metrics({f"prompt_eval/{task}/acc_by_k": by_k[f"k{k}"]["acc"]}, step=k)
            tracking.log_artifact(pc.table_file)
            tracking.log_artifact(pc.curve_file)
            mlflow.log_dict(samples, "prompt_eval_samples.json")
    return flat


if __name__ == "__main__":
    stage_main(run)
