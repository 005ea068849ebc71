"""The world generator and the oracle, without the stage: determinism, task design, rubric, noise."""

from __future__ import annotations

import difflib
import re
import random

import pytest

from tasks import world as W
from tasks.config import compose
from tasks.data import oracle_agreement
from tasks.world import baselines as B
from tasks.world import corpus as C
from tasks.world import instructions as I
from tasks.world import lexicon as L
from tasks.world import oracle as O
from tasks.world import prompts as P
from tasks.world import tasks as T

SMALL = dict(task_sizes={"train": 24, "val": 12, "test": 24}, prompt_sizes=(4, 10),
             instruction_sizes={"sft_train": 40, "sft_val": 10, "rl_prompts": 40, "rl_eval": 20})
SHARES = dict(compose([]).data.corpus_kinds)  # the default mix of document kinds (conf/data/world.yaml)


def test_build_is_deterministic_and_seed_dependent():
    a, b, c = (W.build(s, 20_000, **SMALL, corpus_kinds=SHARES) for s in (7, 7, 8))
    assert a == b
    assert a.corpus != c.corpus and a.tasks != c.tasks and a.instructions != c.instructions
    with pytest.raises(ValueError, match="corpus_kinds"):
        W.build(7, 5_000, **SMALL)


def test_global_random_state_is_not_used():
    random.seed(0)
    a = W.build(7, 5_000, **SMALL, corpus_kinds=SHARES)
    random.seed(1)
    assert W.build(7, 5_000, **SMALL, corpus_kinds=SHARES) == a


# ---- the corpus's pages: many examples of one format, label words drawn per page


@pytest.mark.parametrize("kind", C.PAGE_KINDS)
def test_pages_are_deterministic_per_seed_and_fit_the_window(kind):
    pages = [C.document(kind, random.Random(f"7/{i}")) for i in range(150)]
    assert pages == [C.document(kind, random.Random(f"7/{i}")) for i in range(150)]
    assert pages != [C.document(kind, random.Random(f"8/{i}")) for i in range(150)]
    sizes = sorted(len(p.encode("utf-8")) for p in pages)
    assert sizes[-1] <= C.PAGE_BYTES  # ~470 tokens at ~3.5 bytes a token: inside the 512-token window
    assert sizes[len(sizes) // 2] > 300  # far longer than a short document (~25-80 tokens)


def test_label_words_and_their_meaning_vary_between_pages():
    specs = [C.label_spec(random.Random(i)) for i in range(200)]
    vocabularies = {frozenset(word.values()) for _, word, _ in specs}
    assert len(vocabularies) >= 50 and len({fmt for _, _, fmt in specs}) == len(C._LABEL_FORMATS)
    meanings = {}  # the same label word stands for different classes on different pages
    for source, word, _ in specs:
        for cls, w in word.items():
            meanings.setdefault((source, w), set()).add(cls)
    assert sum(len(c) > 1 for c in meanings.values()) >= 10
    for i, (source, word, fmt) in enumerate(specs[:40]):
        page = C.label_page(random.Random(i), C.LeakGuard([]))
        tail = fmt.split("{y}")[0].split("{x}")[1]  # what comes between an item and its label
        labels = re.findall(re.escape(tail) + r"(.+?)" + re.escape(fmt.split("{y}")[1] or "\n"), page + "\n")
        assert len(labels) >= 8 and set(labels) <= set(word.values()), (fmt, page)


@pytest.fixture(scope="module")
def paged_world():
    """A small world whose corpus holds only pages, 250 kB of them."""
    return W.build(3, 250_000, **SMALL, corpus_kinds={k: 1.0 for k in C.PAGE_KINDS})


def test_pages_hold_no_task_prompt_or_instruction_item(paged_world):
    w = paged_world
    assert len(w.leak_items) > 300 and w.corpus_counts["skipped_items"] >= 0
    assert set(w.corpus_bytes) == set(C.PAGE_KINDS) and all(n > 20_000 for n in w.corpus_bytes.values())
    for doc in w.corpus:
        assert not any(all(s in doc for s in item) for item in w.leak_items if item[0] in doc)
    # the guard finds an item anywhere in a long page, as a brute-force search does
    guard = C.LeakGuard(w.leak_items)
    pair = next(i for i in w.leak_items if len(i) == 2)
    for item in (w.leak_items[0], pair, w.leak_items[-1]):
        page = w.corpus[0] + "\n\n" + " Label: A\n".join(item) + " Label: B\n\n" + w.corpus[1]
        assert guard.leaks(page)
    assert not guard.leaks(w.corpus[0] + "\n" + pair[0])  # half a pair is no leak


def test_no_evaluation_word_in_the_corpus(paged_world):
    """The made-up words and label words of the in-context-only prompt tasks never occur in the corpus."""
    tokens = {t.strip(".,:;?!()|=>-") for doc in paged_world.corpus for t in doc.split()}
    assert not {t for t in tokens if L.is_eval_nonce(t)}
    rows = [r for name in ("novel_word", "word_map") for rows in paged_world.prompts[name].values() for r in rows]
    assert len({r.get("word") for r in rows if "word" in r}) == len([r for r in rows if "word" in r])  # one word per item
    words = {r["word"] for r in rows if "word" in r} | set(P.WORD_MAP.values())
    templates = compose([]).prompt_eval.tasks
    words |= {w for name in P.UNSEEN_VARIANTS for w in templates[name].verbalizer.values()}
    assert all(L.is_eval_nonce(w) for w in words) and not words & tokens


def test_corpus_kinds_take_their_share_of_the_bytes():
    w = W.build(5, 300_000, **SMALL, corpus_kinds=SHARES)
    total, want = sum(w.corpus_bytes.values()), sum(SHARES.values())
    for kind, share in SHARES.items():
        assert abs(w.corpus_bytes.get(kind, 0) / total - share / want) < 0.03, (kind, w.corpus_bytes.get(kind, 0) / total)
    pages = sum(w.corpus_bytes.get(k, 0) for k in C.PAGE_KINDS) / total
    assert 0.25 <= pages <= 0.35


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
    curve = [oracle_agreement(rows, n, 1337) for n in (0.0, 0.05, O.DEFAULT_NOISE, 0.3, 3.0)]
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


# ---- instruction prompts at RLHF scale

BIG = {"sft_train": 1500, "sft_val": 150, "rl_prompts": 20_000, "rl_eval": 200}  # the defaults, 20k RL prompts


@pytest.fixture(scope="module")
def big_instructions():
    world = W.build(11, 0, task_sizes={"train": 4, "val": 4, "test": 4}, prompt_sizes=(1, 1), instruction_sizes=BIG)
    return world.instructions


class _EveryChoice:
    """A stand-in for random.Random that replays one path of choices (branch indices), recording
    how many options each choice had, so `_prompt_space` can walk every path."""

    def __init__(self, path: list[int]):
        self.path, self.widths = path, []

    def _pick(self, n: int) -> int:
        k = self.path[len(self.widths)] if len(self.widths) < len(self.path) else 0
        self.widths.append(n)
        return k

    def choice(self, seq):
        return seq[self._pick(len(seq))]

    def randint(self, a: int, b: int) -> int:
        return a + self._pick(b - a + 1)

    def random(self) -> float:  # a low and a high draw: both sides of any `random() < p`
        return (0.0, 0.999)[self._pick(2)]


def _prompt_space(kind: str) -> set[str]:
    """Every prompt `instruction(kind, ...)` can make (depth-first over all its choices)."""
    prompts, todo = set(), [[]]
    while todo:
        path = todo.pop()
        rng = _EveryChoice(path)
        prompts.add(I.instruction(kind, rng)[0])
        todo += [path + [0] * (pos - len(path)) + [k]
                 for pos in range(len(path), len(rng.widths)) for k in range(1, rng.widths[pos])]
    return prompts


def test_prompt_spaces_leave_room_for_20k_rl_prompts():
    need = I.allocate(sum(BIG.values()), I.WEIGHTS)  # prompts of each kind over all four splits
    for kind in ("mood_sentence", "list", "describe", "opposite"):  # stories: a new story is a new prompt
        n = len(_prompt_space(kind))
        print(f"{kind}: {n} distinct prompts, {need[kind]} needed")
        assert n >= 5 * need[kind], (kind, n, need[kind])


def test_20k_rl_prompts_beside_the_default_splits(big_instructions):
    keys = {}
    for split, rows in big_instructions.items():
        assert len(rows) == BIG[split]
        shares = {k: sum(r["kind"] == k for r in rows) / len(rows) for k in I.KINDS}
        assert all(abs(shares[k] - I.WEIGHTS[k]) <= 0.01 for k in I.KINDS), (split, shares)
        keys[split] = {r["prompt"] for r in rows} | {r["meta"]["story"] for r in rows if "story" in r["meta"]}
        n_stories = sum("story" in r["meta"] for r in rows)
        assert len(keys[split]) == len(rows) + n_stories  # no prompt or story twice within a split
    splits = sorted(keys)
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            assert not keys[a] & keys[b], (a, b)


def test_new_prompts_score_their_demonstration_one_and_every_defect_less(big_instructions):
    rng = random.Random(0)
    rows = big_instructions["rl_prompts"]
    for kind in I.KINDS:
        sample = [r for r in rows if r["kind"] == kind][:150]
        assert len(sample) == 150
        for r in sample:
            good = I.demonstration(kind, r["meta"], rng)
            assert O.score(r, good) == 1.0, (r["prompt"], good, O.checks(r, good))
            for defect in I.DEFECTS[kind]:
                bad = I.corrupt(kind, r["meta"], defect, rng)
                assert O.score(r, bad) < 1.0, (r["prompt"], defect, bad)


def _penalised(kind: str, meta: dict) -> set[str]:
    """Words the rubric counts against a response of this instruction (beside BANNED)."""
    if kind == "mood_sentence":
        return L.polarity_words(-L.MOODS[meta["mood"]]["pol"])
    if kind in ("story_where", "story_colour"):
        p = meta["facts"][meta["person"]]
        return (set(L.PLACES) | set(L.COLOURS)) - {p["place"], p["colour"]}
    if kind == "list":  # every member of every category, but the excluded one
        return {f for c, ws in L.CATEGORIES.items() for w in ws if w != meta["exclude"] for f in (w, L.plural(w))}
    if kind == "describe":
        return (set(L.COLOURS) - {meta["colour"]}) | (set(L.SIZES) - {meta["size"]})
    return set(L.OPPOSITE) - {meta["word"], meta["answer"]}


def test_prompts_state_what_the_rubric_checks(big_instructions):
    """Each prompt names what is asked, states only the meta's word limit, and holds no word that a
    response copying it would be marked down for."""
    meta_keys = {"mood_sentence": {"mood", "subject", "subject_words", "word_limit"},
                 "story_where": {"story", "person", "answer", "facts", "word_limit"},
                 "story_colour": {"story", "person", "object", "answer", "facts", "word_limit"},
                 "list": {"category", "n", "exclude", "word_limit"},
                 "describe": {"subject", "subject_words", "size", "colour", "object", "word_limit"},
                 "opposite": {"word", "answer", "word_limit"}}
    for r in (r for rows in big_instructions.values() for r in rows):
        kind, meta = r["kind"], r["meta"]
        assert set(meta) == meta_keys[kind], (kind, sorted(meta))
        text = r["prompt"].replace(meta.get("story", "\0"), " ")
        toks = set(O.words(text))
        assert not toks & (_penalised(kind, meta) | set(L.BANNED)), (r["prompt"], toks & _penalised(kind, meta))
        for m in re.finditer(r"(at most|no more than|under|fewer than) (\d+) words", text):
            most = int(m[2]) - (m[1] in ("under", "fewer than"))
            assert most == meta["word_limit"], r["prompt"]
        if kind == "mood_sentence":
            assert meta["mood"] in toks and meta["subject"] in text
        elif kind == "story_where":
            assert f"Where is {meta['person']}?" in text
        elif kind == "story_colour":
            assert f"What colour is {meta['person']}'s {meta['object']}?" in text
        elif kind == "list":
            assert f"{L.NUMBER_WORDS[meta['n']]} " in text and meta["category"] in toks
            assert not meta["exclude"] or I.member_text(meta["category"], meta["exclude"], many=True) in text
        elif kind == "describe":
            assert meta["subject"] in text and re.search(r"(at most|no more than|under|fewer than) \d+ words", text)
        else:
            assert "opposite" in toks and meta["word"] in toks


@pytest.mark.parametrize("task", sorted(T.TASKS))
def test_held_out_rows_do_not_depend_on_the_training_size(task):
    """Test and validation rows are drawn first: more training rows leave them as they were."""
    small = T.make_splits(task, random.Random(3), {"train": 24, "val": 12, "test": 24}, set())
    large = T.make_splits(task, random.Random(3), {"train": 96, "val": 12, "test": 24}, set())
    assert list(large) == ["train", "val", "test"]
    assert large["val"] == small["val"] and large["test"] == small["test"]
    assert len(large["train"]) == 96 and large["train"] != small["train"]


def test_build_sizes_per_task():
    per_task = {"story_cloze": {"train": 48, "val": 12, "test": 24}}
    w = W.build(7, 0, **SMALL, per_task=per_task)
    assert len(w.tasks["story_cloze"]["train"]) == 48
    assert {len(w.tasks[t]["train"]) for t in ("sentiment", "paraphrase")} == {24}
    assert w.tasks["story_cloze"]["test"] == W.build(7, 0, **SMALL).tasks["story_cloze"]["test"]


def test_add_flaws_share_mix_and_every_flawed_demonstration_scores_below_one():
    rows = I.make_instruction_splits(random.Random(3), {"sft_train": 400}, set())["sft_train"]
    flawed = I.add_flaws(rows, 0.5, {d: 1.0 for d in I.ALL_DEFECTS}, random.Random(4))
    marked = [r for r in flawed if "flaw" in r]
    assert len(marked) == 200
    for before, after in zip(rows, flawed):
        assert (before["id"], before["prompt"], before["meta"]) == (after["id"], after["prompt"], after["meta"])
        if "flaw" in after:
            assert after["flaw"] in I.DEFECTS[after["kind"]]
            assert O.score(after, after["response"]) < 1.0, after
        else:
            assert after == before and O.score(after, after["response"]) == 1.0
    assert {r["flaw"] for r in marked} >= set(I.GENERIC_DEFECTS) | {"wrong_mood", "false_fact"}
    only = I.add_flaws(rows, 0.25, {"too_long": 1.0, "wrong_mood": 0.0}, random.Random(4))
    assert sum("flaw" in r for r in only) == 100 and {r["flaw"] for r in only if "flaw" in r} == {"too_long"}
    mood_only = I.add_flaws(rows, 1.0, {"wrong_mood": 1.0}, random.Random(4))  # only mood_sentence rows can take it
    assert {r["kind"] for r in mood_only if "flaw" in r} == {"mood_sentence"}
    assert all("flaw" in r for r in mood_only if r["kind"] == "mood_sentence")
    assert I.add_flaws(rows, 0.0, {"too_long": 1.0}, random.Random(4)) == rows


def test_recall_pages_repeat_their_own_random_words_and_are_off_by_default():
    """A recall page's repeats are copies of its own opening sequence (from some point on), which
    differs from page to page; share 0 in the default mix, so the default corpus holds none."""
    firsts = set()
    for i in range(60):
        page = C.recall_page(random.Random(i), C.LeakGuard([]))
        title, again = next((t, a) for t, a in C._RECALL if (not t or page.startswith(t)) and ("\n" + a + "\n") in page)
        chunks = page.split("\n" + again + "\n")
        first = chunks[0][len(title):].strip("\n")
        assert len(chunks) >= 2 and all(first.endswith(c) for c in chunks[1:]), page
        firsts.add(first)
    assert len(firsts) == 60
    assert SHARES["recall_pages"] == 0
    w = W.build(5, 100_000, **SMALL, corpus_kinds=SHARES)
    assert "recall_pages" not in w.corpus_bytes
