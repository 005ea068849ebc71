"""The world generator and the oracle, without the stage: determinism, task design, rubric, noise."""

from __future__ import annotations

import difflib
import random

import pytest

from tasks import world as W
from tasks.data import DataConfig, oracle_agreement
from tasks.world import baselines as B
from tasks.world import instructions as I
from tasks.world import lexicon as L
from tasks.world import oracle as O
from tasks.world import tasks as T

SMALL = dict(task_sizes={"train": 24, "val": 12, "test": 24}, prompt_sizes=(4, 10),
             instruction_sizes={"sft_train": 40, "sft_val": 10, "rl_prompts": 40, "rl_eval": 20})


def test_build_is_deterministic_and_seed_dependent():
    a, b, c = (W.build(s, 20_000, **SMALL) for s in (7, 7, 8))
    assert a == b
    assert a.corpus != c.corpus and a.tasks != c.tasks and a.instructions != c.instructions


def test_global_random_state_is_not_used():
    random.seed(0)
    a = W.build(7, 5_000, **SMALL)
    random.seed(1)
    assert W.build(7, 5_000, **SMALL) == a


@pytest.mark.parametrize("task", sorted(T.TASKS))
def test_splits_balanced_and_disjoint(task):
    sizes = {"train": 60, "val": 30, "test": 60}
    splits = T.make_splits(task, random.Random(0), sizes, set())
    spec = T.TASKS[task]
    labels = spec.get("labels") or list(range(spec["n_choices"]))
    keys = {}
    for split, rows in splits.items():
        counts = {lab: sum(r["label"] == lab for r in rows) for lab in labels}
        assert len(set(counts.values())) == 1, (split, counts)  # exactly balanced
        keys[split] = {frozenset(T.leak_texts(spec["type"], r)) for r in rows}
        assert len(keys[split]) == len(rows)
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]


def test_paraphrase_is_symmetric_by_construction():
    """Order is random and a pair is one item whichever way round (no (b, a) beside (a, b))."""
    rng = random.Random(0)
    rows = T.make_splits("paraphrase", rng, {"train": 400}, set())["train"]
    seen = {(r["text_a"], r["text_b"]) for r in rows}
    assert not any((b, a) in seen for a, b in seen)
    # the "canonical" first rendering lands on either side about equally often
    first = sum(" gave " in r["text_a"] and " got " in r["text_b"] for r in rows)
    second = sum(" got " in r["text_a"] and " gave " in r["text_b"] for r in rows)
    assert first > 0 and second > 0


def test_story_cloze_wrong_endings_differ_in_one_slot():
    def toks(ending: str) -> list[str]:  # "in the shop" / "at the river": one place slot
        return [{"in": "@", "at": "@", "on": "@"}.get(w, w) for w in ending.rstrip(".").replace(",", "").split()]

    rows = T.make_splits("story_cloze", random.Random(0), {"train": 80}, set())["train"]
    for r in rows:
        right = toks(r["choices"][r["label"]])
        for k, c in enumerate(r["choices"]):
            if k != r["label"]:
                ops = [op for op in difflib.SequenceMatcher(a=right, b=toks(c)).get_opcodes() if op[0] != "equal"]
                assert len(ops) == 1, (r["choices"][r["label"]], c)


def test_bag_of_words_is_not_enough_for_sentiment():
    """Negation and contrast: even with 2000 training reviews a bag of words stays far from perfect."""
    sp = T.make_splits("sentiment", random.Random(3), {"train": 2000, "test": 600}, set())
    acc = B.bow(sp["train"], sp["test"], "classification")
    print(f"bag-of-words sentiment accuracy with 2000 training reviews: {acc:.3f}")
    assert 0.5 <= acc < 0.75
    assert B.majority(sp["train"], sp["test"]) == pytest.approx(0.5)


def test_every_demonstration_scores_one_and_every_defect_less():
    rng = random.Random(0)
    for kind in I.KINDS:
        for _ in range(60):
            _, meta = I.instruction(kind, rng)
            ins = {"kind": kind, "meta": meta}
            good = I.demonstration(kind, meta, rng)
            assert O.score(ins, good) == 1.0, (kind, good, O.checks(ins, good))
            for defect in I.DEFECTS[kind]:
                bad = I.corrupt(kind, meta, defect, rng)
                assert O.score(ins, bad) < 1.0, (kind, defect, bad)


def test_oracle_on_hand_written_responses():
    ins = {"kind": "mood_sentence", "meta": {"mood": "happy", "subject": "the red ball",
                                             "subject_words": ["red", "ball"], "word_limit": 20}}
    good = "Anna smiled when she saw the red ball in the park."
    wrong = {
        "wrong mood": "Anna cried when she saw the red ball in the park.",
        "missing subject": "Anna smiled when she saw the blue kite in the park.",
        "too long": good[:-1] + " and then she walked around the whole park again and again until it was very late.",
        "no clean end": "Anna smiled when she saw the red ball in the",
        "banned word": "Anna smiled when she saw the stupid red ball in the park.",
        "repetitive": "Anna smiled at the red ball at the red ball at the red ball.",
    }
    for what, r in wrong.items():
        assert O.score(ins, r) < O.score(ins, good) == 1.0, what
    story = {"kind": "story_where", "meta": {
        "person": "Anna", "answer": "the park", "word_limit": 15, "story": "",
        "facts": {"Anna": {"place": "park", "colour": "red", "mood": "happy", "obj": "kite", "size": "big",
                           "cause": ""},
                  "Ben": {"place": "zoo", "colour": "blue", "mood": "sad", "obj": "cup", "size": "small",
                          "cause": ""}}}}
    assert O.score(story, "Anna is in the park.") == 1.0
    assert O.score(story, "Anna is at the zoo.") < 1.0  # a false fact
    assert O.score(story, "Anna is in the park with her blue kite.") < 1.0  # true place, false colour
    assert O.score({"kind": "user", "meta": {}}, "Fine.") == 0.0  # degenerate: one word


def test_rank_noise_zero_sorts_and_noise_shuffles():
    ins = {"kind": "opposite", "meta": {"word": "hot", "answer": "cold", "word_limit": 12}}
    rs = ["The opposite of hot is", "The opposite of hot is cold.", "The opposite of hot is quiet.",
          "The stupid opposite of hot is cold."]
    assert [O.score(ins, r) for r in rs] == [5 / 8, 1.0, 4 / 8, 7 / 8]
    assert O.rank(ins, rs, 0.0, random.Random(0)) == [1, 3, 0, 2]
    firsts = [O.rank(ins, rs, 1e3, random.Random(i))[0] for i in range(400)]
    assert all(firsts.count(k) > 50 for k in range(4))  # a huge temperature: any order


def test_agreement_falls_with_noise_and_default_is_73_percent():
    world = W.build(1337, 0, task_sizes={"train": 3, "val": 3, "test": 3}, prompt_sizes=(1, 1),
                    instruction_sizes={"sft_train": 1500, "sft_val": 150, "rl_prompts": 1000, "rl_eval": 200})
    rows = world.instructions["rl_prompts"]  # the default RL prompts
    curve = [oracle_agreement(rows, n, 1337) for n in (0.0, 0.05, DataConfig.oracle_noise, 0.3, 3.0)]
    print("pairwise agreement at noise 0, 0.05, default, 0.3, 3:", [round(x, 3) for x in curve])
    assert curve[0] == 1.0
    assert all(a > b for a, b in zip(curve, curve[1:]))
    assert curve[2] == pytest.approx(0.73, abs=0.03)
    assert curve[-1] == pytest.approx(0.5, abs=0.04)


def test_instruction_prompts_unique_across_files():
    world = W.build(5, 0, **SMALL)
    prompts = [r["prompt"] for rows in world.instructions.values() for r in rows]
    assert len(prompts) == len(set(prompts))
    assert all("response" in r for r in world.instructions["sft_train"])
    assert not any("response" in r for r in world.instructions["rl_eval"])


def test_lexicon_words_are_single_tokens_for_the_oracle():
    for pool in (L.PLACES, L.COLOURS, L.SIZES, L.MOOD_NAMES, *L.CATEGORIES.values()):
        assert all(O.words(w) == [w] for w in pool)
