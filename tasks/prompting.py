"""Tasks written as prompts (GPT-2, GPT-3): reading a prompt task, rendering its items with k
solved examples, and scoring them (choice log-probabilities or greedy answers), no gradients.

Shared by the prompt_eval stage (every checkpoint at every k), evaluate (the policies' zero-shot
tax) and the scaling flow; it imports no stage. The stage's docstring describes the method.
"""

from __future__ import annotations

import math
import random
import re
import string
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from model.generate import generate
from model.gpt import GPT
from model.scoring import score_choices
from model.tokenizer import SPECIALS, Tokenizer
from tasks.common import InputError, read_json, read_jsonl
from tasks.schema import PromptTemplate, PromptEvalConfig

KINDS = ("choice", "generate")



class QueryTooLong(InputError):
    """A test item's query and continuation alone exceed the model's window."""


@dataclass
class PromptTask:
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


def load_task(data_dir: Path, name: str, spec: PromptTemplate) -> PromptTask:
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
    return PromptTask(name, kind, spec, splits["train"], splits["test"])


def query_text(spec: PromptTemplate, row: dict) -> str:
    return spec.template.format_map(row)


def target_text(spec: PromptTemplate, row: dict, answer: str) -> str:
    return spec.target.format_map({**row, "answer": spec.verbalizer.get(answer, answer)})


def example_text(spec: PromptTemplate, row: dict) -> str:
    """A solved example: the query followed by its gold target."""
    return query_text(spec, row) + target_text(spec, row, row["answer"])


def draw_examples(task: PromptTask, item: int, k: int, seed: int) -> list[int]:
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


def fit_context(tok: Tokenizer, task: PromptTask, item: int, examples: list[dict], room: int, need: str) -> tuple[list[int], int]:
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


def build_requests(tok: Tokenizer, task: PromptTask, k: int, pc: PromptEvalConfig, block_size: int, vocab_size: int) -> list[Request]:
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


def evaluate_task(model: GPT, tok: Tokenizer, task: PromptTask, k: int, pc: PromptEvalConfig) -> tuple[dict | None, list[dict], dict[int, bool]]:
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


def check_config(pc: PromptEvalConfig) -> list[str]:
    """The task names to evaluate (ranges and choices are the schema's; this checks the names)."""
    names = list(pc.select) or list(pc.tasks)
    unknown = [n for n in names if n not in pc.tasks]
    if unknown:
        raise InputError(f"prompt_eval.select names {', '.join(unknown)}, which have no template in prompt_eval.tasks")
    if not names:
        raise InputError("prompt_eval.tasks is empty: nothing to evaluate")
    return names


def evaluate(model: GPT, tok: Tokenizer, tasks: list[PromptTask], pc: PromptEvalConfig) -> tuple[dict, dict]:
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


