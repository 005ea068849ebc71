"""The four labelled tasks, one per GPT-1 input transform, and the generators behind them.

- `sentiment` (classification): a short review; negation ("not bad") and contrast ("good, but
  it was noisy"; "great, even though it was dirty") decide the label, so a bag of words is
  not enough.
- `entailment`: a premise of facts about a scene; the hypothesis restates, contradicts (often
  through "not") or is undecided by it (a fact the premise does not state).
- `paraphrase` (similarity): two sentences that mean the same (active/passive, synonyms,
  swapped comparatives) or differ in one hard-to-spot slot (swapped roles, one word changed);
  the relation is symmetric and the pair order random.
- `story_cloze` (multiple choice): a story and four endings, one consistent, three wrong in
  exactly one slot (person, place, mood or colour).

Every split is label-balanced (labels cycle, then rows are shuffled).
"""

from __future__ import annotations

import random

from tasks.world import lexicon as L
from tasks.world import stories as S

TASKS = {
    "sentiment": {"type": "classification", "labels": ["negative", "positive"]},
    "entailment": {"type": "entailment", "labels": ["contradiction", "entailment", "neutral"]},
    "paraphrase": {"type": "similarity", "labels": ["different", "same"]},
    "story_cloze": {"type": "multiple_choice", "n_choices": 4},
}

# ---- sentiment


def _review_subject(rng: random.Random) -> tuple[str, str, bool]:
    """(subject, opening sentence that introduces it, whether it was bought)."""
    day, place = rng.choice(L.DAYS), rng.choice(L.PLACES)
    kind = rng.randrange(3)
    if kind == 0:
        thing = f"{rng.choice(L.COLOURS)} {rng.choice(L.OBJECTS)}"
        return f"the {thing}", f"I bought {L.a(thing)} {L.at(place)} on {day}.", True
    if kind == 1:
        food = rng.choice(L.FOODS)
        return f"the {food} {L.at(place)}", f"I had {L.a(food)} {L.at(place)} on {day}.", False
    return f"the {place}", f"We visited the {place} on {day}.", False


def review(rng: random.Random, label: str) -> str:
    """A review whose verdict is `label`; the verdict comes from how the words combine."""
    pol = 1 if label == "positive" else -1
    good, bad = (L.POSITIVE_WORDS, L.NEGATIVE_WORDS) if pol > 0 else (L.NEGATIVE_WORDS, L.POSITIVE_WORDS)
    subj, opening, bought = _review_subject(rng)
    g, g2, b = *rng.sample(good, 2), rng.choice(bad)
    S_ = L.cap(subj)
    body = rng.choice((
        f"{S_} was {g}.",
        f"{S_} was not {b}.",
        f"{S_} was {b}, but it was {g}.",
        f"Although {subj} was {b}, it was {g}.",
        f"I expected {subj} to be {b}, but it was {g}.",
        f"{S_} was {g}, even though it was {b}.",
        f"{S_} was {g} and {g2}.",
        f"{S_} was not {b}, and it was {g}.",
    ))
    out = [opening, body] if rng.random() < 0.6 else [body]
    if rng.random() < 0.3:
        again = "I would buy it again." if bought else "I will go back."
        out.append(again if pol > 0 else again.replace("would", "would not").replace("will", "will not"))
    return " ".join(out)


# ---- paraphrase


def _give(f: dict, r: int) -> str:
    A, B, t, p = f["a"], f["b"], f"{f['colour']} {f['obj']}", f["place"]
    return (f"{A} gave {B} the {t} {L.at(p)}.", f"{A} gave the {t} to {B} {L.at(p)}.",
            f"{L.cap(L.at(p))}, {A} gave {B} the {t}.", f"{B} got the {t} from {A} {L.at(p)}.",
            f"The {t} was given to {B} by {A} {L.at(p)}.")[r]


def _compare(f: dict, r: int) -> str:
    (more, less, base), x, y = f["cmp"], f["x"], f["y"]
    return (f"The {x} is {more} than the {y}.", f"The {y} is {less} than the {x}.",
            f"The {y} is not as {base} as the {x}.")[r]


def _together(f: dict, r: int) -> str:
    A, B, p = f["a"], f["b"], f["place"]
    return (f"{A} and {B} went to the {p}.", f"{B} and {A} went to the {p}.",
            f"{A} went to the {p} with {B}.", f"{A} went with {B} to the {p}.")[r]


def _mood(f: dict, r: int) -> str:
    A, p, m = f["a"], f["place"], f["mood"]
    syn = L.MOODS[m]["syn"]
    return (f"{A} was {m} {L.at(p)}.", f"{A} felt {syn[0]} {L.at(p)}.",
            f"{L.cap(L.at(p))}, {A} was {syn[1]}.")[r]


COMPARE = (("bigger", "smaller", "big"), ("faster", "slower", "fast"), ("older", "younger", "old"),
           ("taller", "shorter", "tall"), ("heavier", "lighter", "heavy"))
FRAMES = {"give": (_give, 5), "compare": (_compare, 3), "together": (_together, 4), "mood": (_mood, 3)}


def _frame_facts(rng: random.Random) -> dict:
    a, b = rng.sample(L.NAMES, 2)
    x, y = rng.sample(L.ANIMALS, 2)
    return {"a": a, "b": b, "x": x, "y": y, "place": rng.choice(L.PLACES), "obj": rng.choice(L.OBJECTS),
            "colour": rng.choice(L.COLOURS), "mood": rng.choice(L.MOOD_NAMES), "cmp": rng.choice(COMPARE)}


SLOTS = {"give": ("swap", "colour", "place", "obj"), "compare": ("swap", "x"), "together": ("place", "b", "without"),
         "mood": ("mood", "place", "a")}


def _different(rng: random.Random, frame: str, f: dict) -> str:
    """A sentence of `frame` about the facts `f` with one slot changed, so the meaning differs."""
    render, n = FRAMES[frame]
    slot = rng.choice(SLOTS[frame])
    g = dict(f)
    if slot == "without":
        return f"{f['a']} went to the {f['place']} without {f['b']}."
    if slot == "swap":
        g["a"], g["b"], g["x"], g["y"] = f["b"], f["a"], f["y"], f["x"]
    elif slot == "mood":
        g["mood"] = rng.choice(L.NEGATIVE_MOODS if L.MOODS[f["mood"]]["pol"] > 0 else L.POSITIVE_MOODS)
    else:
        pool = {"colour": L.COLOURS, "place": L.PLACES, "obj": L.OBJECTS, "x": L.ANIMALS,
                "a": L.NAMES, "b": L.NAMES}[slot]
        g[slot] = L.other(rng, pool, f[slot], f["a"], f["b"], f["x"], f["y"])
    return render(g, rng.randrange(n))


def paraphrase_pair(rng: random.Random, label: str) -> tuple[str, str]:
    """Two sentences, the same in meaning (label 'same') or not ('different'), in random order."""
    frame = rng.choice(sorted(FRAMES))
    render, n = FRAMES[frame]
    f = _frame_facts(rng)
    i, j = rng.sample(range(n), 2)
    a = render(f, i)
    b = render(f, j) if label == "same" else _different(rng, frame, f)
    return (a, b) if rng.random() < 0.5 else (b, a)


# ---- rows of the four tasks


def example(task: str, rng: random.Random, label: str | int) -> dict:
    """One row of `task` in the tasks/<name>/ contract, with the requested label."""
    if task == "sentiment":
        return {"text": review(rng, label), "label": label}
    if task == "entailment":
        scene = S.make_scene(rng, rng.choice((1, 2, 2, 3)))
        prem, stated = S.premise(rng, scene)
        return {"premise": prem, "hypothesis": S.hypothesis(rng, scene, stated, label), "label": label}
    if task == "paraphrase":
        a, b = paraphrase_pair(rng, label)
        return {"text_a": a, "text_b": b, "label": label}
    if task == "story_cloze":
        scene = S.make_scene(rng, rng.choice((1, 2)))
        context = S.cloze_context(rng, scene)
        return {"context": context, "choices": S.cloze_endings(rng, scene, label), "label": label}
    raise KeyError(task)


def leak_texts(task_type: str, row: dict) -> list[str]:
    """The distinctive text of a row: the corpus must never contain all of it in one document."""
    return {"classification": lambda: [row["text"]], "entailment": lambda: [row["premise"]],
            "similarity": lambda: [row["text_a"], row["text_b"]],
            "multiple_choice": lambda: [row["context"]]}[task_type]()


def make_splits(task: str, rng: random.Random, sizes: dict[str, int], seen: set[str]) -> dict[str, list[dict]]:
    """Label-balanced splits of `task` ({split: n}), no item repeated within or across splits.

    `seen` holds the keys of every item generated so far (all tasks share it) and is updated.
    Held-out splits are drawn first (test, val, then the rest), so a larger training split
    leaves the test and validation rows as they were.
    """
    spec = TASKS[task]
    labels = spec.get("labels") or list(range(spec["n_choices"]))
    out = {}
    first = [s for s in ("test", "val") if s in sizes]
    for split in first + [s for s in sizes if s not in first]:
        n = sizes[split]
        rows = []
        for i in range(n - n % len(labels)):
            for _ in range(1000):
                row = example(task, rng, labels[i % len(labels)])
                key = "\n".join(sorted(leak_texts(spec["type"], row)))
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
                    break
            else:
                raise RuntimeError(f"world: cannot find a new {task} item (the split is too large)")
        rng.shuffle(rows)
        out[split] = rows
    return {split: out[split] for split in sizes}
