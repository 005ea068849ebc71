"""tasks/prompt_eval.py: prompts, few-shot draws, both scorers (against transformers), the stage end to end.

A toy world built in-process: a choice task (review sentiment) and a generate task (the colour of
a thing), a BPE tokenizer trained on them, and a tiny GPT trained for a few seconds on solved
examples so that its answers mean something.
"""

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import settings
from omegaconf import OmegaConf

from model.checkpoint import load_checkpoint, save_checkpoint
from model.gpt import GPT, GPTConfig
from model.tokenizer import Tokenizer
from tasks.common import InputError
from tasks.config import compose, validate, write_params
from model.scoring import score_choices
from tasks.prompt_eval import run, table_rows
from tasks.prompting import (
    PromptTemplate,
    PromptTask,
    build_requests,
    cut_at_stop,
    draw_examples,
    evaluate_task,
    generate_answers,
    load_task,
    normalize_answer,
    paired_gain,
    query_text,
    target_text,
)

ROOT = Path(__file__).resolve().parents[1]
GOOD = ("good", "great", "nice", "lovely", "clean")
BAD = ("bad", "awful", "dirty", "noisy", "boring")
THINGS = ("food", "room", "park", "film", "hotel", "cake", "bus", "shop")
COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "sun": "yellow", "coal": "black",
           "blood": "red", "frog": "green", "milk": "white", "cherry": "red", "night": "black",
           "lemon": "yellow", "sea": "blue"}
TEMPLATES = {
    "sentiment": {"template": "Review: {text}\nSentiment:"},
    "colour": {"template": "Q: What colour is the {thing}?\nA:", "stop": ["\n", "."]},
}


def sentiment_rows(rng: random.Random, n: int, start: int = 0) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        pos = i % 2 == 0
        word = rng.choice(GOOD if pos else BAD)
        text = f"The {rng.choice(THINGS)} was {word}."
        rows.append({"text": text, "choices": ["positive", "negative"], "answer": "positive" if pos else "negative"})
    return rows


def write_task(root: Path, name: str, kind: str, fields: list[str], train: list[dict], test: list[dict]) -> None:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "task.json").write_text(json.dumps({"name": name, "kind": kind, "fields": fields, "description": name}))
    for split, rows in (("train", train), ("test", test)):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def train_tiny(corpus: str, tok: Tokenizer, steps: int = 200) -> GPT:
    """A 2-layer GPT fitted to the corpus: enough to learn the formats and the colour facts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a busy 2-core machine: one thread is faster
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=64))
    data = torch.tensor(tok.encode(corpus))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        off = torch.randint(0, len(data) - 65, (16,), generator=g)
        x = torch.stack([data[o : o + 64] for o in off])
        y = torch.stack([data[o + 1 : o + 65] for o in off])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """(prompts dir, checkpoint dir): the toy tasks and a tiny GPT trained on solved examples of them."""
    root = tmp_path_factory.mktemp("world")
    rng = random.Random(0)
    prompts = root / "prompts"
    write_task(prompts, "sentiment", "choice", ["text"], sentiment_rows(rng, 40), sentiment_rows(rng, 12))
    colour_rows = [{"thing": t, "answer": c} for t, c in COLOURS.items()]
    write_task(prompts, "colour", "generate", ["thing"], colour_rows, colour_rows[:8])
    docs = []
    for i in range(300):
        if rng.random() < 0.5:
            s = sentiment_rows(rng, 1, start=i)[0]
            docs.append(f"Review: {s['text']}\nSentiment: {s['answer']}")
        else:
            t = rng.choice(list(COLOURS))
            docs.append(f"Q: What colour is the {t}?\nA: {COLOURS[t]}.")
    corpus = "\n\n".join(docs)
    tok = Tokenizer.train([corpus], vocab_size=320)
    tok.save(root / "tokenizer.json")
    save_checkpoint(root / "ckpt", train_tiny(corpus, tok), {"stage": "test"}, tokenizer_path=root / "tokenizer.json")
    return prompts, root / "ckpt"


def task_of(world, name: str, **spec) -> PromptTask:
    return load_task(world[0], name, PromptTemplate(**(TEMPLATES[name] | spec)))


def make_cfg(tmp_path: Path, world, *overrides: str, tasks: dict | None = None):
    out = tmp_path / "metrics"
    cfg = compose([
        "device=cpu",
        "tracking.enabled=false",
        f"prompt_eval.model={world[1]}",
        f"prompt_eval.data_dir={world[0]}",
        f"prompt_eval.metrics_file={out / 'prompt_eval.json'}",
        f"prompt_eval.table_file={out / 'table.md'}",
        f"prompt_eval.curve_file={out / 'curve.csv'}",
        f"prompt_eval.plot_file={out / 'curve.png'}",
        *overrides,
    ])
    raw = OmegaConf.to_container(cfg)
    raw["prompt_eval"]["tasks"] = tasks or TEMPLATES  # the toy world's templates instead of conf/'s
    return validate(raw)


# --- prompts and examples -------------------------------------------------------------------------


def test_fewshot_examples_exclude_the_query_and_follow_the_seed(world):
    task = task_of(world, "colour")
    task.test = [{"thing": "sky", "answer": "blue"}] * 3  # the query text occurs in train
    sky = next(j for j, r in enumerate(task.train) if r["thing"] == "sky")
    for item in range(3):
        for seed in range(20):
            drawn = draw_examples(task, item, 11, seed)
            assert sky not in drawn and len(set(drawn)) == 11  # every other row, never the query
    task = task_of(world, "sentiment")
    a = [draw_examples(task, i, 4, seed=1) for i in range(len(task.test))]
    assert a == [draw_examples(task, i, 4, seed=1) for i in range(len(task.test))]
    assert a != [draw_examples(task, i, 4, seed=2) for i in range(len(task.test))]
    assert a[0] != a[1]  # drawn per item
    assert draw_examples(task, 0, 1, seed=1) == a[0][:1]  # nested: k=1 is the first of k=4
    other = load_task(world[0], "sentiment_v2", PromptTemplate(task="sentiment", template="{text} Verdict:"))
    assert draw_examples(other, 0, 4, seed=1) == a[0]  # another template of the same data: same examples
    with pytest.raises(InputError, match=r"k=41 exceeds the 40 rows"):
        draw_examples(task, 0, 41, seed=1)
    colour = task_of(world, "colour")
    colour.test = [{"thing": "sky", "answer": "blue"}]
    with pytest.raises(InputError, match="differ from test item 1"):
        draw_examples(colour, 0, 12, seed=1)  # 12 train rows, one of them is the query


def test_prompt_text_and_loglikelihoods_match_transformers(world, tmp_path):
    """Our batched scores == transformers' GPT2LMHeadModel on the exported checkpoint, one row at a time."""
    transformers = pytest.importorskip("transformers")
    from model.hf import export_hf

    hf = transformers.GPT2LMHeadModel.from_pretrained(export_hf(world[1], tmp_path / "hf")).eval()
    ckpt = load_checkpoint(world[1])
    tok = Tokenizer.load(ckpt.tokenizer_path)
    pc = settings("prompt_eval", max_items=4, seed=3)
    variants = [  # (template, target, what the choices read): one-token, several-token, trailing-space
        ("Review: {text}\nSentiment:", " {answer}", [" positive", " negative"]),
        ("Review: {text}\nSentiment:", " {answer} food", [" positive food", " negative food"]),
        ("Review: {text}\nSentiment: ", "{answer}", [" positive", " negative"]),
    ]
    assert len(tok.encode(" positive food")) > 1
    for template, target, choices in variants:
        task = task_of(world, "sentiment", template=template, target=target)
        for k in (0, 2):
            reqs = build_requests(tok, task, k, pc, 64, ckpt.config.vocab_size)
            assert reqs[0].targets == choices and reqs[0].shots == k
            if k == 2:  # the prompt, spelt out
                ex = [task.train[j] for j in draw_examples(task, 0, 2, 3)]
                want = "".join(f"Review: {e['text']}\nSentiment: {e['answer']}{target[9:]}\n\n" for e in ex)
                assert tok.decode(reqs[0].context) == want + f"Review: {task.test[0]['text']}\nSentiment:"
            # batch_size 5: two items (4 choice rows) per batch, contexts of unequal length padded together
            assert len({len(r.context) for r in reqs}) > 1
            ours = score_choices(ckpt.model, [r.context for r in reqs], [r.target_ids for r in reqs], batch_size=5)
            for r, scores in zip(reqs, ours):
                for text, score in zip(r.targets, scores):
                    ids = tok.encode(tok.decode(r.context)) + tok.encode(text)  # re-tokenized from text
                    with torch.no_grad():
                        logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1)
                    c = len(r.context)
                    ref = sum(logp[t - 1, ids[t]].item() for t in range(c, len(ids)))
                    assert abs(score - ref) < 1e-4, (template, target, k, text, score, ref)


def test_shared_context_scoring_equals_one_pass_per_choice_up_to_the_window():
    """Choices side by side after one cached context score as [context + choice] alone would, also
    when the context nearly fills the window and the choices together would not fit after it."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=16)).eval()
    g = torch.Generator().manual_seed(1)
    contexts, choices = [], []
    for n_ctx, lens in [(5, [1, 3, 2]), (29, [4, 1, 3, 4]), (12, [1, 1]), (31, [1, 2]), (20, [6, 12])]:
        contexts.append(torch.randint(1, 50, (n_ctx,), generator=g).tolist())
        choices.append([torch.randint(1, 50, (m,), generator=g).tolist() for m in lens])
    for batch_size in (1, 4, 64):
        ours = score_choices(model, contexts, choices, batch_size)
        for ctx, chs, scores in zip(contexts, choices, ours):
            assert len(scores) == len(chs)
            for c, score in zip(chs, scores):
                ids = torch.tensor([ctx + c])
                with torch.no_grad():
                    logp = torch.log_softmax(model(ids[:, :-1])[0].double(), -1)  # the last token predicts nothing
                ref = sum(logp[t - 1, ids[0, t]].item() for t in range(len(ctx), ids.size(1)))
                assert abs(score - ref) < 1e-4, (len(ctx), len(c), batch_size, score, ref)
    with pytest.raises(ValueError, match="position_ids"):  # a 4-D mask must say where its tokens stand
        model.hidden_states(torch.ones((1, 2), dtype=torch.long), attention_mask=torch.ones((1, 1, 2, 2), dtype=torch.bool))


# --- generation and exact match -------------------------------------------------------------------


def test_paired_gain_is_the_mean_item_difference_with_its_interval():
    base = {0: True, 1: False, 2: False, 3: True}
    other = {0: True, 1: True, 2: True, 3: False, 9: True}  # item 9 was not scored at the base k: left out
    gain, ci = paired_gain(base, other)
    d = [0, 1, 1, -1]
    var = sum((x - 0.25) ** 2 for x in d) / 3
    assert gain == pytest.approx(0.25) and ci == pytest.approx(1.96 * (var / 4) ** 0.5)
    assert paired_gain(base, base) == (0.0, 0.0)


def test_normalize_answer_and_stop_sequences():
    assert normalize_answer("  The Park. ") == "park"
    assert normalize_answer("An apple, a pear!") == "apple pear"
    assert normalize_answer("Theatre") == "theatre"  # only whole-word articles go
    assert normalize_answer(" 3") == normalize_answer("3")
    assert cut_at_stop(" blue.\nQ: what", ["\n", "."]) == " blue"
    assert cut_at_stop(" blue\nQ. what", ["\n", "."]) == " blue"
    assert cut_at_stop(" blue", ["\n"]) == " blue"
    assert cut_at_stop("\nblue", ["\n"]) == ""


def test_generation_batched_equals_one_at_a_time(world):
    ckpt = load_checkpoint(world[1])
    tok = Tokenizer.load(ckpt.tokenizer_path)
    task = task_of(world, "colour", stop=["\n", "."])
    reqs = build_requests(tok, task, 2, settings("prompt_eval"), 64, ckpt.config.vocab_size)
    prompts = [r.context for r in reqs]
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    assert generate_answers(ckpt.model, tok, prompts, task.spec, 8) == [
        generate_answers(ckpt.model, tok, [p], task.spec, 1)[0] for p in prompts
    ]


def test_stage_end_to_end(world, tmp_path):
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_cfg(tmp_path, world, "prompt_eval.shots=[0,2]", "tracking.enabled=true",
                   f"tracking.uri={db}", f"tracking.artifact_dir={tmp_path / 'mlruns'}")
    flat = run(cfg)
    out = tmp_path / "metrics"
    name = world[1].name
    metrics = json.loads((out / "prompt_eval.json").read_text())
    col, sen = metrics[name]["colour"], metrics[name]["sentiment"]
    assert set(col) == {"k0", "k2"} and col["k2"]["n"] == 8 and col["k2"]["chance"] == 0.0
    assert "acc_norm" not in col["k2"] and sen["k2"]["chance"] == 0.5 and sen["k2"]["n"] == 12
    # the trained model knows the facts and the format: exact match well above chance
    assert col["k0"]["acc"] >= 0.5 and col["k2"]["acc"] >= 0.5 and sen["k2"]["acc"] >= 0.75, metrics
    assert flat["prompt_eval/colour/k2/acc"] == col["k2"]["acc"]
    # the paired few-shot gain: same items, k=2 minus k=0; none at the smallest k
    assert "gain" not in col["k0"] and col["k2"]["gain"] == pytest.approx(col["k2"]["acc"] - col["k0"]["acc"])
    assert col["k2"]["gain_ci95"] >= 0
    rows = table_rows(metrics)
    assert [(r["task"], r["k"]) for r in rows] == [("colour", 0), ("colour", 2), ("sentiment", 0), ("sentiment", 2)]
    assert rows[0]["acc_norm"] is None and rows[2]["acc_norm"] is not None
    table = (out / "table.md").read_text()
    assert f"| {name} | colour | 8 | 0.000 |" in table and "| k=2 − k=0 (95% CI) |" in table
    assert f"{col['k2']['gain']:+.3f} ± {col['k2']['gain_ci95']:.3f} |" in table
    curve = (out / "curve.csv").read_text().splitlines()
    assert curve[0] == "model,task,k,acc,chance" and len(curve) == 5
    assert (out / "curve.png").stat().st_size > 1000

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=db)
    (mlrun,) = client.search_runs([client.get_experiment_by_name("instructflow").experiment_id])
    assert mlrun.data.metrics["prompt_eval/sentiment/k2/acc"] == sen["k2"]["acc"]
    assert "prompt_eval/colour/k0/acc_norm" not in mlrun.data.metrics
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "prompt_eval/colour/acc_by_k")] == [0, 2]
    assert {"prompt_eval_curve.png", "prompt_eval_samples.json"} <= {a.path for a in client.list_artifacts(mlrun.info.run_id)}


# --- bad input -----------------------------------------------------------------------------------


def test_template_naming_a_missing_field_exits_2_with_one_line(world, tmp_path):
    cfg = make_cfg(tmp_path, world, tasks={"sentiment": {"template": "Review: {review}\nSentiment:"}})
    params = write_params(cfg, tmp_path / "params.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.prompt_eval", "--params", str(params)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "error: prompt_eval.tasks.sentiment.template names the field {review}, which task sentiment lacks "
        "(it may use: text)"
    )
    with pytest.raises(InputError, match=r"tasks.colour.instruction names the field \{thing\}"):
        task_of(world, "colour", instruction="Colours of {thing}")


def test_k_larger_than_the_train_split(world, tmp_path):
    with pytest.raises(InputError, match=r"prompt_eval.shots: k=13 exceeds the 12 rows of colour/train.jsonl"):
        run(make_cfg(tmp_path, world, "prompt_eval.shots=[0,13]"))
    assert not (tmp_path / "metrics").exists()  # failed before writing anything


def test_long_contexts_drop_the_oldest_examples_or_fail_clearly(world):
    ckpt = load_checkpoint(world[1])
    tok = Tokenizer.load(ckpt.tokenizer_path)
    task = task_of(world, "sentiment", instruction="Is the review positive or negative?")
    pc = settings("prompt_eval", max_items=6, seed=0)
    full = build_requests(tok, task, 8, pc, 1024, ckpt.config.vocab_size)
    assert all(r.shots == 8 for r in full)
    short = build_requests(tok, task, 8, pc, 64, ckpt.config.vocab_size)
    for f, s in zip(full, short):
        assert 0 < s.shots < 8 and len(s.context) <= 64  # + the 1-token choice - its last token
        instruction, kept = tok.decode(s.context).split("\n\n", 1)
        assert instruction == task.spec.instruction  # examples are dropped before the instruction
        assert tok.decode(f.context).endswith("\n\n" + kept)  # the newest examples and the query survive
        assert kept.count("Review:") == s.shots + 1
    m, _, _ = evaluate_task(ckpt.model, tok, task, 8, pc)
    assert m["truncated"] == 6 and m["mean_shots"] < 8
    long = {"text": "The food was good. " * 40, "choices": ["positive", "negative"], "answer": "positive"}
    task.test = [task.test[0], long, task.test[1]]
    with pytest.raises(InputError, match=r"test item 2: the query alone is \d+ tokens, but beside its longest choice"):
        build_requests(tok, task, 0, pc, 64, ckpt.config.vocab_size)
    pc.too_long = "skip"  # or leave such items out, counted
    assert [r.item for r in build_requests(tok, task, 2, pc, 64, ckpt.config.vocab_size)] == [0, 2]
    m, _, _ = evaluate_task(ckpt.model, tok, task, 2, pc)
    assert m["n"] == 2 and m["skipped"] == 1
    task.test = [long]
    assert evaluate_task(ckpt.model, tok, task, 2, pc) == (None, [], {})


def test_unknown_model_and_selected_task(world, tmp_path):
    with pytest.raises(InputError, match="neither a checkpoint name"):
        run(make_cfg(tmp_path, world, "prompt_eval.model=nope"))
    with pytest.raises(InputError, match="prompt_eval.select names story"):
        run(make_cfg(tmp_path, world, "prompt_eval.select=[story]"))
    assert OmegaConf.select(compose([]), "prompt_eval.checkpoints.pretrain") == "models/pretrain"


# --- the world's in-context-only tasks ------------------------------------------------------------


@pytest.fixture(scope="module")
def world_prompts(tmp_path_factory):
    """The world's prompt tasks (a small build, no corpus) in the data stage's layout."""
    from tasks import world as W
    from tasks.world.prompts import PROMPT_TASKS

    w = W.build(3, 0, task_sizes={"train": 8, "val": 4, "test": 8}, prompt_sizes=(16, 40),
                instruction_sizes={"sft_train": 4, "sft_val": 4, "rl_prompts": 4, "rl_eval": 4})
    root = tmp_path_factory.mktemp("world_prompts")
    for name, splits in w.prompts.items():
        (root / name).mkdir()
        (root / name / "task.json").write_text(json.dumps({"name": name, **PROMPT_TASKS[name]}))
        for split, rows in splits.items():
            (root / name / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_in_context_only_tasks_have_templates_and_flags(world_prompts):
    from tasks.world import lexicon as L
    from tasks.world.prompts import IN_CONTEXT_ONLY, PROMPT_TASKS, UNSEEN_VARIANTS

    templates = settings("prompt_eval").tasks
    assert {"sentiment_unseen", "entailment_unseen", "paraphrase_unseen", "mood_of_unseen", "novel_word", "word_map"} == set(IN_CONTEXT_ONLY)
    assert set(IN_CONTEXT_ONLY) <= set(templates)
    assert {n for n, s in PROMPT_TASKS.items() if s["in_context_only"]} == {"novel_word", "word_map"}
    for name, data in UNSEEN_VARIANTS.items():
        assert templates[name].task == data and not PROMPT_TASKS[data]["in_context_only"]
    for name in IN_CONTEXT_ONLY:
        task = load_task(world_prompts, name, templates[name])  # the template names only fields the task has
        assert task.kind == json.loads((world_prompts / (templates[name].task or name) / "task.json").read_text())["kind"]
        if task.kind == "choice" and name != "sentiment_unseen":  # every label word is made up, none the corpus uses
            words = {target_text(task.spec, r, c).strip() for r in task.train + task.test for c in r["choices"]}
            assert words and all(L.is_eval_nonce(w) for w in words), (name, words)


def test_in_context_only_zero_shot_prompts_hold_no_answer(world_prompts):
    from tasks.world.prompts import IN_CONTEXT_ONLY

    templates = settings("prompt_eval").tasks
    for name in IN_CONTEXT_ONLY:
        task = load_task(world_prompts, name, templates[name])
        assert len(task.test) == 40 and len({json.dumps(r, sort_keys=True) for r in task.test}) == 40
        for row in task.test:
            words = set(re.findall(r"[\w']+", query_text(task.spec, row).lower()))
            gold = task.spec.verbalizer.get(row["answer"], row["answer"]).lower()
            assert gold not in words, (name, row)
            if task.kind == "choice" and name != "sentiment_unseen":  # no label word at all: zero-shot cannot know them
                assert not words & {task.spec.verbalizer.get(c, c).lower() for c in row["choices"]}, (name, row)
    # the answers are balanced: zero-shot by one label word stays at chance
    word_map = load_task(world_prompts, "word_map", templates["word_map"])
    assert len({r["answer"] for r in word_map.test}) == 4 and max(
        sum(r["answer"] == a for r in word_map.test) for a in {r["answer"] for r in word_map.test}) == 10
