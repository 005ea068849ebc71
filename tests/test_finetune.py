"""finetune stage (GPT-1 §3.2-3.3): input transforms, heads, the L2 + λ·L1 objective, the
init x λ grid end to end, the report, and bad input. Tiny models on CPU, seconds."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers
from torch.nn import functional as F

from conftest import ROOT, run_cmd
from model.checkpoint import load_checkpoint, save_checkpoint
from model.gpt import GPT, GPTConfig
from model.heads import TaskHead, TaskModel
from model.tokenizer import Tokenizer
from tasks import finetune, finetune_report, prompting
from tasks.common import InputError, read_jsonl, write_jsonl
from tasks.config import compose
from tasks.report import finetune_goals, verdicts_gpt1
from tasks.finetune import Specials, collate, transform
from tasks.world import tasks as world_tasks
from tasks.world.baselines import difficulty
from tasks.world.prompts import as_prompt_row

WORDS = "red blue green cat dog bird Ann Bob park shop happy sad good bad not was the a it is".split()
QUICK = ["tracking.enabled=false", "finetune.progress=false", "finetune.epochs=1", "finetune.batch_size=16"]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> tuple[Tokenizer, Path]:
    rng = random.Random(0)
    t = Tokenizer.train([sentence(rng, 12) for _ in range(300)], vocab_size=300)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    t.save(path)
    return t, path


def tiny_gpt(vocab_size: int, seed: int = 0, block_size: int = 48) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32))


def write_task(root: Path, name: str, spec: dict, splits: dict[str, list[dict]]) -> Path:
    folder = root / "data/raw/tasks" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.json").write_text(json.dumps({"name": name, **spec}))
    for split, rows in splits.items():
        write_jsonl(folder / f"{split}.jsonl", rows)
    return folder


def toy_sentiment(n: int, seed: int) -> list[dict]:
    """Filler words plus 'good' (positive) or 'bad' (negative) three times: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("negative", "positive")[i % 2]
        words = [w for w in sentence(rng, rng.randint(3, 12)).split() if w not in ("good", "bad")]
        for _ in range(3):
            words.insert(rng.randrange(len(words) + 1), "good" if i % 2 else "bad")
        rows.append({"text": " ".join(words), "label": label})
    return rows


def toy_story(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"context": sentence(rng, 6), "choices": [sentence(rng, 2) for _ in range(4)], "label": i % 4} for i in range(n)]


@pytest.fixture
def workspace(tmp_path, monkeypatch, tok) -> Path:
    """cwd with a tiny pre-trained checkpoint (models/pretrain) and two tasks in the data contract."""
    t, tok_path = tok
    monkeypatch.chdir(tmp_path)
    save_checkpoint("models/pretrain", tiny_gpt(t.vocab_size), {"stage": "pretrain"}, tokenizer_path=tok_path)
    write_task(tmp_path, "sentiment", {"type": "classification", "labels": ["negative", "positive"]},
               {"train": toy_sentiment(96, 1), "val": toy_sentiment(32, 2), "test": toy_sentiment(32, 3)})
    write_task(tmp_path, "story_cloze", {"type": "multiple_choice", "n_choices": 4},
               {"train": toy_story(24, 1), "val": toy_story(8, 2), "test": toy_story(8, 3)})
    return tmp_path


# --- input transforms ---------------------------------------------------------------------------


def test_transforms_token_layout(tok):
    t, _ = tok
    sp = Specials.of(t)
    S, D, E = sp.start, sp.delim, sp.extract
    assert len({S, D, E, sp.pad, t.eos_id}) == 5
    a, b, c = t.encode("the red cat"), t.encode("Bob was sad"), t.encode("it is good")
    views, cut = transform("classification", [a], sp, 48)
    assert views == [[S, *a, E]] and not cut
    views, cut = transform("entailment", [a, b], sp, 48)
    assert views == [[S, *a, D, *b, E]] and not cut
    views, cut = transform("similarity", [a, b], sp, 48)
    assert views == [[S, *a, D, *b, E], [S, *b, D, *a, E]] and not cut
    views, cut = transform("multiple_choice", [a, [b, c]], sp, 48)
    assert views == [[S, *a, D, *b, E], [S, *a, D, *c, E]] and not cut


def test_truncation_keeps_the_end_and_the_hypothesis(tok):
    sp = Specials.of(tok[0])
    S, D, E = sp.start, sp.delim, sp.extract
    text, hyp = list(range(100, 120)), [7, 8, 9]
    views, cut = transform("classification", [text], sp, 10)
    assert cut and views == [[S, *text[-8:], E]]  # the start of the text goes, the end stays
    views, cut = transform("entailment", [text, hyp], sp, 10)
    assert cut and views == [[S, *text[-4:], D, *hyp, E]]
    views, cut = transform("multiple_choice", [text, [hyp, [5]]], sp, 10)
    assert cut and views == [[S, *text[-4:], D, *hyp, E], [S, *text[-6:], D, 5, E]]
    with pytest.raises(finetune.TooLong, match="hypothesis of 8 tokens"):
        transform("entailment", [text, list(range(8))], sp, 10)
    # similarity: each side keeps at least half of the room, identically in both orders
    long, short = list(range(200, 230)), [1, 2]
    views, cut = transform("similarity", [long, short], sp, 13)
    assert cut and views == [[S, *long[-8:], D, 1, 2, E], [S, 1, 2, D, *long[-8:], E]]
    swapped, _ = transform("similarity", [short, long], sp, 13)
    assert swapped == views[::-1]
    both, _ = transform("similarity", [long, list(range(300, 330))], sp, 13)
    assert all(len(v) <= 13 for v in both) and both[0][1:6] == long[-5:]


# --- heads ---------------------------------------------------------------------------------------


def test_similarity_is_order_symmetric_and_padding_free(tok):
    t, _ = tok
    sp = Specials.of(t)
    torch.manual_seed(0)
    model = TaskModel(tiny_gpt(t.vocab_size), TaskHead(32, "classify", 2, dropout=0.1)).eval()
    a, b = t.encode("Ann was happy in the park"), t.encode("the dog is red")
    ab, _ = transform("similarity", [a, b], sp, 48)
    ba, _ = transform("similarity", [b, a], sp, 48)
    longer, _ = transform("similarity", [a + a, b + b], sp, 48)  # forces padding of the others
    idx, lengths = collate([ab, ba, longer], sp.pad)
    logits, _ = model(idx, lengths)
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-6)  # same up to float rounding
    h = torch.randn(4, 2, 32)
    assert torch.equal(model.head(h), model.head(h.flip(1)))  # the sum of the two orders is exact
    alone, _ = model(*collate([ab], sp.pad))  # no padding at all
    torch.testing.assert_close(alone[0], logits[0])
    assert not torch.allclose(logits[0], logits[2])


def test_multiple_choice_probabilities_sum_to_one(tok):
    t, _ = tok
    sp = Specials.of(t)
    model = TaskModel(tiny_gpt(t.vocab_size), TaskHead(32, "choice", 1)).eval()
    rows = [transform("multiple_choice", [t.encode(f"story {i}"), [t.encode(w) for w in ("a", "red cat", "Bob", "sad")]], sp, 48)[0] for i in range(3)]
    scores, _ = model(*collate(rows, sp.pad))
    assert scores.shape == (3, 4)
    probs = scores.softmax(-1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    assert probs.std() > 0  # the answers really are scored differently


def test_multiple_choice_scores_follow_the_answers_not_their_positions(tok):
    """The (B, V) scores are each view scored alone (flatten + reshape + extract position agree),
    permuting the answers permutes the scores, and L2 reaches every answer of every example:
    the labelled one's score is pushed up, the others down. (story_cloze's below-25% result
    is not this path: see the README, Fine-tuning.)"""
    t, _ = tok
    sp = Specials.of(t)
    answers = [["a", "red cat", "Bob was sad", "dog"], ["the green bird", "Ann", "it is not good", "park"]]
    rows = [transform("multiple_choice", [t.encode(f"story {i} was good"), [t.encode(w) for w in ans]], sp, 48)[0]
            for i, ans in enumerate(answers)]
    model = TaskModel(tiny_gpt(t.vocab_size, seed=5), TaskHead(32, "choice", 1, dropout=0.0))
    torch.nn.init.normal_(model.head.proj.weight, std=1.0)  # scores far apart, so a mix-up would show
    embedded = []

    def keep(module, inputs, out):
        out.retain_grad()
        embedded.append(out)

    hook = model.gpt.transformer.wte.register_forward_hook(keep)
    idx, lengths = collate(rows, sp.pad)
    scores, _ = model(idx, lengths)
    scores.retain_grad()
    hook.remove()
    with torch.no_grad():
        alone = torch.stack([torch.cat([model(*collate([[v]], sp.pad))[0][0] for v in ex]) for ex in rows])
        perm = [2, 0, 3, 1]
        permuted, _ = model(*collate([[ex[p] for p in perm] for ex in rows], sp.pad))
    torch.testing.assert_close(scores.detach(), alone)
    torch.testing.assert_close(permuted, scores.detach()[:, perm])
    y = torch.tensor([2, 1])
    F.cross_entropy(scores, y).backward()
    grad = embedded[0].grad.norm(dim=-1)  # (M,): the real tokens only, answer after answer (padding never runs)
    assert grad.shape == (int(lengths.sum()),) and (grad > 0).all()  # every real token of every answer
    right = F.one_hot(y, 4).bool()
    assert (scores.grad[right] < 0).all() and (scores.grad[~right] > 0).all()
    acc = finetune.evaluate(model, finetune.Encoded(rows, y.tolist(), 0), sp.pad, 1, "cpu", None)["acc"]
    assert acc == (alone.argmax(-1) == y).float().mean().item()  # evaluation compares with the same labels


def test_lm_coef_zero_gives_the_lm_head_no_gradient(tok):
    """With λ = 0 the tied embedding's gradient is exactly L2's (and the LM head never runs);
    with λ > 0 it differs by λ·∇L1, and adding the L1 gradient alone recovers it."""
    t, _ = tok
    sp = Specials.of(t)
    rows = [transform("classification", [t.encode(f"the cat was {w}")], sp, 48)[0] for w in ("good", "bad", "not good")]
    idx, lengths = collate(rows, sp.pad)
    y = torch.tensor([1, 0, 0])

    def grads(lm_coef=None, only_lm=False):
        model = TaskModel(tiny_gpt(t.vocab_size, seed=3), TaskHead(32, "classify", 2, dropout=0.0))
        calls = []
        model.gpt.lm_head.register_forward_hook(lambda *_: calls.append(1))
        if only_lm:
            _, l1 = model(idx, lengths, lm=True)
            l1.backward()
        else:
            logits, l1 = model(idx, lengths, lm=lm_coef is not None and lm_coef > 0)
            loss = F.cross_entropy(logits, y)
            (loss + lm_coef * l1 if l1 is not None else loss).backward()
        return model.gpt.lm_head.weight.grad.clone(), len(calls)

    g_l2, calls_l2 = grads(None)  # L2 alone, computed by hand
    g_zero, calls_zero = grads(0.0)
    g_half, calls_half = grads(0.5)
    g_l1, _ = grads(only_lm=True)
    assert calls_l2 == calls_zero == 0 and calls_half == 1
    assert torch.equal(g_zero, g_l2)
    assert not torch.allclose(g_half, g_l2)
    torch.testing.assert_close(g_half, g_l2 + 0.5 * g_l1)


# --- the stage -----------------------------------------------------------------------------------


def test_end_to_end_grid_checkpoint_and_report(workspace):
    cfg = compose([*QUICK, "finetune.epochs=4", "finetune.lr=3e-3", "finetune.max_len=12", "finetune.tasks=[sentiment,story_cloze]",
                   "finetune.ablations.lm_coef=[0.0,0.5]"])  # the full grid: GPT-1's two ablations
    flat = finetune.run(cfg)
    metrics = json.loads(Path("metrics/finetune/sentiment.json").read_text())
    assert set(metrics["sentiment"]) == {"pretrain", "scratch"}
    for init in ("pretrain", "scratch"):
        assert set(metrics["sentiment"][init]) == {"lm0.0", "lm0.5"}
        m = metrics["sentiment"][init]["lm0.5"]
        assert set(m) == {"val_acc", "test_acc", "val_macro_f1", "test_macro_f1", "truncated"}
    main = metrics["sentiment"]["pretrain"]["lm0.5"]
    assert flat["sentiment.pretrain.lm0.5.test_acc"] == main["test_acc"]
    check_items("sentiment", metrics["sentiment"], cfg)
    assert main["truncated"] > 0  # max_len=12 cuts the longer reviews
    assert main["test_acc"] >= 0.75  # 'good' present or not: learnable in 24 steps

    # the checkpoint holds the main setting: reloading it reproduces its test accuracy
    model, meta, tok = finetune.load_finetuned("models/finetune/sentiment")
    assert meta["init"] == "pretrain" and meta["lm_coef"] == 0.5 and meta["head"]["n_out"] == 2
    task = finetune.load_task("data/raw", "sentiment")
    test = finetune.encode_split(task, "test", tok, Specials.of(tok), meta["max_len"])
    again = finetune.evaluate(model, test, tok.pad_id, 64, "cpu", 2)
    assert again["acc"] == pytest.approx(main["test_acc"])

    finetune.run(compose([*QUICK, "finetune.task=story_cloze", "finetune.ablations.lm_coef=[0.5]"]))
    story = json.loads(Path("metrics/finetune/story_cloze.json").read_text())["story_cloze"]
    assert set(story) == {"pretrain", "scratch"} and set(story["scratch"]) == {"lm0.5"}
    assert "test_macro_f1" not in story["pretrain"]["lm0.5"]
    check_items("story_cloze", story, cfg)

    mean = finetune_report.run(cfg)
    report = json.loads(Path("metrics/finetune.json").read_text())
    assert report["sentiment"]["scratch"]["lm0.0"]["test_acc"] == metrics["sentiment"]["scratch"]["lm0.0"]["test_acc"]
    rows = finetune_report.table_rows(report)
    assert [r["task"] for r in rows] == ["sentiment", "story_cloze", "mean"]
    s = rows[0]
    assert s["gap lm0.5"] == pytest.approx(s["pretrain lm0.5"] - s["scratch lm0.5"], abs=0.11)
    assert rows[1]["gap lm0.0"] is None  # story_cloze ran no scratch λ=0
    assert mean["mean/pretrain lm0.5"] == rows[2]["pretrain lm0.5"]
    assert "| **mean** |" in Path("metrics/finetune_table.md").read_text()

    # the paired comparison on the same rows, in the report and the table, and the verdicts it gives
    items = {t: json.loads(Path(f"metrics/finetune/{t}.items.json").read_text())["correct"] for t in ("sentiment", "story_cloze")}
    for t in items:
        assert set(report[t]["vs"]) == {"zero-shot", "baseline", "scratch"}
        assert report[t]["vs"] == finetune_report.versus(items[t])
        v = report[t]["vs"]["scratch"]
        assert v["n"] == len(items[t]["scratch lm0.5"])
        assert v["diff"] == pytest.approx(report[t]["pretrain"]["lm0.5"]["test_acc"] - report[t]["scratch"]["lm0.5"]["test_acc"])
    v = report["sentiment"]["vs"]["scratch"]
    assert rows[0]["vs scratch"] == f"{100 * v['diff']:+.1f} ± {100 * v['ci95']:.1f}"
    assert rows[2]["vs scratch"] is None  # no interval for a mean over tasks
    goals = finetune_goals(Path("metrics"))
    for g in goals.values():
        for b in g["bars"].values():
            assert b["ok"] == (b["diff"] > b["ci95"] or min(b["acc"], b["acc"] + b["diff"]) >= 0.99)
        assert g["ok"] == all(b["ok"] for b in g["bars"].values())
    # 8 stories after one epoch: not beyond the interval of every bar, so not met, whatever the point estimates
    assert not all(b["ok"] for b in goals["story_cloze"]["bars"].values()) and goals["story_cloze"]["ok"] is False
    verdicts = {line.split(" | ")[0][2:]: line for line in verdicts_gpt1(Path("metrics")).splitlines() if line.startswith("| ")}
    assert "not cleared" in verdicts["story_cloze"] and verdicts["story_cloze"].endswith("| **NOT met** |")


def check_items(task: str, by_init: dict, cfg) -> None:
    """<task>.items.json: one 0/1 per test row for every setting (their mean is its test_acc), the word
    baseline's (its mean is the data stage's number) and zero-shot's, scored on the same rows."""
    items = json.loads(Path(f"metrics/finetune/{task}.items.json").read_text())
    folder = Path("data/raw/tasks") / task
    train, test = read_jsonl(folder / "train.jsonl"), read_jsonl(folder / "test.jsonl")
    correct = items["correct"]
    assert items["n"] == len(test)
    assert set(correct) == {f"{i} {lm}" for i, lms in by_init.items() for lm in lms} | {"baseline", "zero-shot"}
    assert all(len(v) == len(test) and set(v) <= set("01-") for v in correct.values())
    for init, lms in by_init.items():
        for lm, m in lms.items():
            v = correct[f"{init} {lm}"]
            assert "-" not in v and v.count("1") / len(v) == pytest.approx(m["test_acc"])
    kind = json.loads((folder / "task.json").read_text())["type"]
    base = difficulty(kind, train, test)
    assert correct["baseline"].count("1") / len(test) == base["overlap" if kind == "multiple_choice" else "bow"]
    # zero-shot: the prompt_eval template scored at k=0 on these rows, posed as a prompt task by hand
    posed = Path("posed") / task
    answers = {"sentiment": lambda r: ["positive", "negative"], "story_cloze": lambda r: r["choices"]}[task]
    rows = [{**{k: v for k, v in r.items() if k != "label"}, "choices": answers(r),
             "answer": r["label"] if task == "sentiment" else r["choices"][r["label"]]} for r in test]
    write_jsonl(posed / "train.jsonl", [])
    write_jsonl(posed / "test.jsonl", rows)
    fields = ["text"] if task == "sentiment" else ["context"]
    (posed / "task.json").write_text(json.dumps({"kind": "choice", "fields": fields}))
    pc = OmegaConf.to_object(cfg.prompt_eval)
    pc.shots, pc.max_items, pc.too_long = [0], -1, "skip"
    ptask = prompting.load_task(Path("posed"), task, pc.tasks[task])
    model, tok = load_checkpoint("models/pretrain").model, Tokenizer.load(Path("models/pretrain/tokenizer.json"))
    _, _, hits = prompting.evaluate_task(model.eval(), tok, ptask, 0, pc)
    assert correct["zero-shot"] == "".join("-" if i not in hits else "01"[hits[i]] for i in range(len(test)))
    assert hits  # some rows fit the 48-token window


def test_labelled_rows_posed_as_prompt_rows():
    """A labelled row becomes the prompt task's row: its fields, the choices and the answer among them."""
    for name in ("sentiment", "entailment", "paraphrase", "story_cloze"):
        spec = world_tasks.TASKS[name]
        labels = spec.get("labels") or list(range(spec["n_choices"]))
        for i, label in enumerate(labels):
            row = world_tasks.example(name, random.Random(i), label)
            posed = as_prompt_row(name, row)
            assert posed["answer"] in posed["choices"]
            assert {k: row[k] for k in row if k not in ("label", "choices")}.items() <= posed.items()
    assert as_prompt_row("entailment", {"premise": "a", "hypothesis": "b", "label": "neutral"})["answer"] == "maybe"
    assert as_prompt_row("paraphrase", {"text_a": "a", "text_b": "b", "label": "different"})["answer"] == "no"
    assert as_prompt_row("my_nli", {"premise": "a", "hypothesis": "b", "label": 1}) is None


def test_paired_interval_by_hand():
    """Fine-tuned 11110-, bar 10100 and a row it skipped: d = 0 1 0 1 0 (the skipped row left out), mean 0.4,
    sd² = (3·0.4² + 2·0.6²)/4 = 0.3, half-width 1.96·√(0.3/5) = 0.4801."""
    vs = finetune_report.versus({"pretrain lm0.5": "111101", "scratch lm0.5": "101001", "zero-shot": "10100-"})
    assert set(vs) == {"scratch", "zero-shot"}  # no baseline entry, no baseline bar
    z = vs["zero-shot"]
    assert z["n"] == 5 and z["acc"] == pytest.approx(0.4) and z["diff"] == pytest.approx(0.4)
    assert z["ci95"] == pytest.approx(1.96 * (0.3 / 5) ** 0.5) and z["ci95"] == pytest.approx(0.4801, abs=1e-4)
    assert vs["scratch"]["n"] == 6 and vs["scratch"]["diff"] == pytest.approx(1 / 3)
    assert finetune_report.versus({"scratch lm0.5": "10"}) == {}  # no fine-tuned vector: nothing to compare


def test_scratch_main_setting_and_single_setting(workspace):
    finetune.run(compose([*QUICK, "finetune.init=scratch", "finetune.lm_coef=0", "finetune.ablations.init=[]"]))
    metrics = json.loads(Path("metrics/finetune/sentiment.json").read_text())
    assert metrics == {"sentiment": {"scratch": {"lm0.0": metrics["sentiment"]["scratch"]["lm0.0"]}}}
    meta = load_checkpoint("models/finetune/sentiment").meta
    assert meta["init"] == "scratch" and meta["lm_coef"] == 0.0
    pre = load_checkpoint("models/pretrain").model.state_dict()["transformer.h.0.attn.c_attn.weight"]
    tuned = load_checkpoint("models/finetune/sentiment").model.state_dict()["transformer.h.0.attn.c_attn.weight"]
    assert (pre - tuned).abs().max() > 0.01  # not the pre-trained weights plus a small update


def test_user_task_runs_without_code_change(workspace):
    """A 3-label user task (as the data stage writes it from a CSV) with integer labels."""
    rng = random.Random(5)

    def rows(n):
        return [{"premise": sentence(rng, 5), "hypothesis": sentence(rng, 3), "label": [10, 20, 30][i % 3]} for i in range(n)]

    write_task(workspace, "my_nli", {"type": "entailment", "labels": [10, 20, 30]}, {"train": rows(30), "val": rows(9), "test": rows(9)})
    tracked = [o for o in QUICK if not o.startswith("tracking.")] + [f"tracking.uri=sqlite:///{workspace}/mlflow.db"]
    finetune.run(compose([*tracked, "finetune.task=my_nli", "finetune.ablations.init=[pretrain]", "finetune.ablations.lm_coef=[0.0]"]))
    m = json.loads(Path("metrics/finetune/my_nli.json").read_text())["my_nli"]
    assert set(m["pretrain"]) == {"lm0.5", "lm0.0"} and 0.0 <= m["pretrain"]["lm0.5"]["test_macro_f1"] <= 1.0
    assert load_checkpoint("models/finetune/my_nli").meta["head"]["n_out"] == 3
    # no prompt template named my_nli: no zero-shot bar; the word baseline still runs (bag of words, integer labels)
    items = json.loads(Path("metrics/finetune/my_nli.items.json").read_text())
    assert set(items["correct"]) == {"pretrain lm0.5", "pretrain lm0.0", "baseline"} and items["n"] == 9

    # MLflow: the stage's run, and one child run per setting nested under it
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True).set_index("tags.mlflow.runName")
    parent = runs.loc["finetune/my_nli", "run_id"]
    children = runs[runs["tags.mlflow.parentRunId"] == parent]
    assert sorted(children.index) == ["my_nli/pretrain/lm0.0", "my_nli/pretrain/lm0.5"]
    assert children.loc["my_nli/pretrain/lm0.0", "metrics.final/test_acc"] == m["pretrain"]["lm0.0"]["test_acc"]


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, row, match",
    [
        ({"type": "regression", "labels": [0, 1]}, {"text": "x", "label": 0}, "unknown task type 'regression'"),
        ({"type": "classification", "labels": ["negative", "positive"]}, {"text": "x", "label": "neutral"},
         r"train.jsonl: row 2: label 'neutral' is not one of"),
        ({"type": "classification", "labels": [0, 1]}, {"text": "x", "label": "1"}, r"row 2: label '1' is not one of"),
        ({"type": "multiple_choice", "n_choices": 4}, {"context": "x", "choices": ["a", "b", "c"], "label": 0},
         r"train.jsonl: row 2: 3 choices, task.json declares n_choices=4"),
        ({"type": "multiple_choice", "n_choices": 4}, {"context": "x", "choices": ["a", "b", "c", "d"], "label": 4},
         r"row 2: label 4 is not an answer index in 0..3"),
        ({"type": "entailment", "labels": ["yes", "no"]}, {"premise": "x", "label": "yes"}, r"row 2: missing string field 'hypothesis'"),
    ],
)
def test_bad_task_data_is_one_line(workspace, spec, row, match):
    good = {"classification": {"text": "ok", "label": spec.get("labels", [0])[0]},
            "multiple_choice": {"context": "ok", "choices": ["a", "b", "c", "d"], "label": 1},
            "entailment": {"premise": "ok", "hypothesis": "ok", "label": "yes"}}.get(spec["type"], {"text": "ok", "label": 0})
    write_task(workspace, "bad", spec, {s: [good, row] for s in ("train", "val", "test")})
    with pytest.raises(InputError, match=match) as e:
        finetune.run(compose([*QUICK, "finetune.task=bad"]))
    assert "\n" not in str(e.value)


def test_hypothesis_longer_than_context_is_one_line(workspace):
    rows = [{"premise": "a", "hypothesis": "red " * 40, "label": "yes"}]
    write_task(workspace, "long", {"type": "entailment", "labels": ["yes", "no"]}, {s: rows for s in ("train", "val", "test")})
    with pytest.raises(InputError, match=r"train.jsonl: row 1: hypothesis of \d+ tokens does not fit max_len=48"):
        finetune.run(compose([*QUICK, "finetune.task=long"]))


def test_special_init_mean_moves_only_the_special_rows(tok):
    """special_init=mean starts <|start|> <|delim|> <|extract|> at the mean text-token embedding;
    every other row, and the model for `keep` or from scratch, is the pre-trained one."""
    t, _ = tok
    sp = Specials.of(t)
    base = tiny_gpt(t.vocab_size, seed=5)
    task = finetune.LabelledTask("t", "classification", ["a", "b"], None, Path("."))
    specials = (sp.start, sp.delim, sp.extract)
    fc = compose(["finetune.special_init=mean"]).finetune
    w0 = base.transformer.wte.weight.detach()
    w = finetune.build_model("pretrain", base, task, fc, "cpu", specials).gpt.transformer.wte.weight.detach()
    text = [i for i in range(t.vocab_size) if i not in specials]
    assert torch.equal(w[text], w0[text])
    for i in specials:
        assert torch.allclose(w[i], w0[text].mean(0)) and not torch.allclose(w0[i], w[i])
    keep = compose(["finetune.special_init=keep"]).finetune
    assert torch.equal(finetune.build_model("pretrain", base, task, keep, "cpu", specials).gpt.transformer.wte.weight, w0)


def test_bad_settings(workspace):
    with pytest.raises(InputError, match="finetune.special_init: must be one of keep, mean, got 'zero'"):
        finetune.run(compose([*QUICK, "finetune.special_init=zero"]))
    with pytest.raises(InputError, match="finetune.init: must be one of pretrain, scratch, got 'random'"):
        finetune.run(compose([*QUICK, "finetune.init=random"]))
    with pytest.raises(InputError, match="finetune.max_len=64: must be between 4 and the model's block_size=48"):
        finetune.run(compose([*QUICK, "finetune.max_len=64"]))
    with pytest.raises(InputError, match="data/raw/tasks/nope/task.json: not found"):
        finetune.run(compose([*QUICK, "finetune.task=nope"]))
    with pytest.raises(InputError, match="metrics/finetune/sentiment.json: not found"):
        finetune_report.run(compose([*QUICK]))


def test_tokenizer_without_specials_exits_2_with_one_line(workspace):
    """Through `python -m tasks.finetune`: exit status 2 and a single stderr line."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator(["the red cat was good"] * 10, trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    hf.save("plain.json")
    save_checkpoint("models/plain", tiny_gpt(300), {"stage": "pretrain"}, tokenizer_path="plain.json")
    proc = run_cmd([sys.executable, "-m", "tasks.finetune", *QUICK, "finetune.pretrained_dir=models/plain"],
                   cwd=workspace, env={"PYTHONPATH": str(ROOT)}, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "lacks the special tokens <|pad|>, <|start|>, <|delim|>, <|extract|>" in lines[0], proc.stderr


def test_task_epochs_override_only_their_task(workspace, capsys):
    """finetune.task_epochs.<task> sets that task's epoch count; other tasks keep finetune.epochs."""
    args = [*QUICK, "finetune.progress=true", "finetune.ablations.init=[]", "finetune.epochs=1"]
    finetune.run(compose([*args, "+finetune.task_epochs.sentiment=2", "+finetune.task_epochs.story_cloze=3"]))
    err = capsys.readouterr().err
    assert "sentiment pretrain lm0.5 epoch 2/2" in err and "epoch 3/3" not in err
    finetune.run(compose([*args, "+finetune.task_epochs.story_cloze=3"]))
    err = capsys.readouterr().err
    assert "sentiment pretrain lm0.5 epoch 1/1" in err and "epoch 2/" not in err
    with pytest.raises(InputError, match=r"finetune.task_epochs.sentiment: must be >= 1, got 0"):
        finetune.run(compose([*args, "+finetune.task_epochs.sentiment=0"]))
