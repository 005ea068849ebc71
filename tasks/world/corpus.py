"""The world's unlabelled pre-training corpus: documents that teach what the tasks need.

Kinds (share of documents): stories followed by questions and answers, stories with their
ending, reviews with their verdict in words, fact passages that say what is true, false or
unknown, paraphrase statements, antonym lists, counting passages, category lists and
descriptions, and mood sentences. They come from the same generators as the tasks, prompts
and instructions, but never contain any of their items: `LeakGuard` rejects a document that
holds all the distinctive text of any item (a review, a premise, a story, a paraphrase pair,
a counted list), so every held-out example is new to a model pre-trained on this corpus.
"""

from __future__ import annotations

import random
from collections import defaultdict

from tasks.world import instructions as I
from tasks.world import lexicon as L
from tasks.world import prompts as P
from tasks.world import stories as S
from tasks.world import tasks as T

KINDS = {"story_qa": 0.2, "story_ending": 0.1, "review": 0.22, "facts": 0.12, "paraphrase": 0.1,
         "antonyms": 0.05, "counting": 0.06, "descriptions": 0.07, "moods": 0.08}


class LeakGuard:
    """Finds documents that contain every string of some item (anchored on its first 3 words)."""

    def __init__(self, items: list[list[str]]):
        self.index: dict[tuple[str, ...], list[list[str]]] = defaultdict(list)
        for strings in items:
            if strings:
                self.index[tuple(strings[0].split()[:3])].append(strings)

    def leaks(self, doc: str) -> bool:
        toks = doc.split()
        for i in range(len(toks) - 2):
            for strings in self.index.get(tuple(toks[i:i + 3]), ()):
                if all(s in doc for s in strings):
                    return True
        return False


def _qa(rng: random.Random, scene: S.Scene) -> str:
    p = rng.choice(scene.people)
    q = rng.randrange(4)
    if q == 0:
        return f"Question: Where is {p.name}?\nAnswer: {p.name} is {L.at(p.place)}."
    if q == 1:
        return f"Question: What colour is {p.name}'s {p.obj}?\nAnswer: It is {p.colour}."
    if q == 2:
        return f"Question: How did {p.name} feel?\nAnswer: {p.name} felt {p.mood}."
    return f"Question: Who had the {p.colour} {p.obj}?\nAnswer: {p.name} had it."


def document(kind: str, rng: random.Random) -> str:
    if kind == "story_qa":
        scene = S.make_scene(rng, rng.choice((1, 2, 3)))
        qa = [_qa(rng, scene) for _ in range(rng.randint(1, 3))]
        return S.story(rng, scene, rng.choice(("word", "cause", "both"))) + "\n" + "\n".join(dict.fromkeys(qa))
    if kind == "story_ending":
        scene = S.make_scene(rng, rng.choice((1, 2)))
        return S.cloze_context(rng, scene) + " " + S.cloze_endings(rng, scene, 0)[0]
    if kind == "review":
        label = rng.choice(("positive", "negative"))
        text = T.review(rng, label)
        return rng.choice((f"Review: {text}\nVerdict: {label}.", f"{text} Overall: {label}.",
                           f"A customer wrote: {text} The review is {label}."))
    if kind == "facts":
        scene = S.make_scene(rng, rng.choice((1, 2, 3)))
        prem, stated = S.premise(rng, scene)
        lines = [prem]
        for label, lead in rng.sample((("entailment", "So it is true that"), ("contradiction", "It is false that"),
                                       ("neutral", "We cannot tell whether")), rng.randint(1, 3)):
            lines.append(f"{lead} {S.hypothesis(rng, scene, stated, label)}")
        return "\n".join(lines)
    if kind == "paraphrase":
        out = []
        for _ in range(rng.randint(2, 4)):
            label = rng.choice(("same", "different"))
            a, b = T.paraphrase_pair(rng, label)
            out.append(f"{a} In other words: {b}" if label == "same" else f"{a} That is not the same as: {b}")
        return "\n".join(out)
    if kind == "antonyms":
        pairs = rng.sample(L.ANTONYMS, rng.randint(3, 7))
        if rng.random() < 0.5:
            return "Opposites: " + ", ".join(f"{x} and {y}" for x, y in pairs) + "."
        return " ".join(f"The opposite of {x} is {y}." if rng.random() < 0.5 else f"{L.cap(y)} is the opposite of {x}."
                        for x, y in pairs)
    if kind == "counting":
        items, target, n = P.count_items(rng)
        times = "time" if n == 1 else "times"
        return rng.choice((f"Here is a list: {items}. The word {target} appears {n} {times} in it.",
                           f"In the list {items} the word {target} comes {L.NUMBER_WORDS[n]} {times}."))
    if kind == "descriptions":
        cat = rng.choice(sorted(L.CATEGORIES))
        items = L.sample(rng, L.CATEGORIES[cat], rng.randint(3, 6))
        lines = [f"Some {cat}: {I.join_list([I.member_text(cat, w) for w in items])}."]
        for _ in range(rng.randint(1, 3)):
            meta = {"size": rng.choice(L.SIZES), "colour": rng.choice(L.COLOURS), "object": rng.choice(L.OBJECTS)}
            lines.append(I.demonstration("describe", meta, rng))
        return " ".join(lines)
    if kind == "moods":
        out = []
        for _ in range(rng.randint(2, 4)):
            meta = {"mood": rng.choice(L.MOOD_NAMES), "subject_words": [rng.choice(L.COLOURS), rng.choice(L.OBJECTS)]}
            out.append(I.demonstration("mood_sentence", meta, rng))
        return " ".join(out)
    raise KeyError(kind)


def make_corpus(rng: random.Random, n_bytes: int, guard: LeakGuard) -> tuple[list[str], dict[str, int]]:
    """Documents until their UTF-8 text reaches `n_bytes`. -> (docs, counts per kind + 'rejected')."""
    kinds, weights = list(KINDS), list(KINDS.values())
    docs, counts, size = [], dict.fromkeys([*KINDS, "rejected"], 0), 0
    while size < n_bytes:
        kind = rng.choices(kinds, weights)[0]
        doc = document(kind, rng)
        if guard.leaks(doc):
            counts["rejected"] += 1
            continue
        docs.append(doc)
        counts[kind] += 1
        size += len(doc.encode("utf-8"))
    return docs, counts
