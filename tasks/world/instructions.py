"""Instructions (InstructGPT): prompts of six kinds, their demonstrations, and flawed responses.

Kinds and their `meta` (everything the oracle reads; `word_limit` is the most words allowed):

- `mood_sentence` "Write a happy sentence about the red ball."
  meta: mood, subject ("the red ball"), subject_words (["red", "ball"]), word_limit
- `story_where` a story, then "Where is Anna?"
  meta: story, person, answer ("the park"), facts ({name: {place, mood, cause, obj, colour, size}}), word_limit
- `story_colour` a story, then "What colour is Anna's kite?"
  meta: story, person, object, answer ("red"), facts, word_limit
- `list` "List three animals other than cats."
  meta: category (animals|colours|foods|places|things), n, exclude (a member or ""), word_limit
- `describe` "Describe the big red ball in under 12 words."
  meta: subject, subject_words, size, colour, object, word_limit (here 11: "under 12")
- `opposite` "What is the opposite of 'hot'? Answer in one sentence."
  meta: word, answer, word_limit

The examples are one phrasing each: every kind has a dozen or so asks, most followed by one of a
few closing lines (`MOOD_ASKS`, `MOOD_ENDS`, ...), so that enough distinct prompts exist for RLHF
at scale: about 114k mood_sentence, 196k list, 34k describe and 14k opposite prompts (stories:
unbounded), room for well over 20,000 RL prompts beside the other splits in WEIGHTS' shares.

`add_flaws` gives a share of the demonstrations one defect each, as people's demonstrations have
(InstructGPT's and AlpacaFarm's were written by people, of mixed quality): the row keeps its
prompt and meta, its `response` is edited (`corrupt`) and it records the defect as `flaw`.

`sample_responses` draws a realistic mix for an instruction, as a policy in training would:
correct answers in other words, and answers with one or two defects of the kinds the oracle
checks (`DEFECTS`). Tests and the oracle's noise calibration use it.
"""

from __future__ import annotations

import random

from tasks.world import lexicon as L
from tasks.world import stories as S

KINDS = ("mood_sentence", "story_where", "story_colour", "list", "describe", "opposite")
# Share of each kind in every instruction file.
WEIGHTS = {"mood_sentence": 0.25, "story_where": 0.2, "story_colour": 0.15, "list": 0.1,
           "describe": 0.25, "opposite": 0.05}
GENERIC_DEFECTS = ("too_long", "no_clean_end", "banned_word", "repetitive")
DEFECTS = {
    "mood_sentence": ("wrong_mood", "missing_subject", *GENERIC_DEFECTS),
    "story_where": ("false_fact", *GENERIC_DEFECTS),
    "story_colour": ("false_fact", *GENERIC_DEFECTS),
    "list": ("false_fact", "off_topic", *GENERIC_DEFECTS),
    "describe": ("missing_subject", "false_fact", *GENERIC_DEFECTS),
    "opposite": ("false_fact", *GENERIC_DEFECTS),
}
FILLER = "After that everyone walked home together in the evening and had some warm tea with friends."


def member_text(category: str, w: str, many: bool = False) -> str:
    if category == "places":
        return f"the {w}"
    return L.plural(w) if many and category in ("animals", "foods", "things") else w


def join_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# Prompt phrasings: an ask, then (mostly) a closing line; `instruction` fills in the fields. Every
# phrasing asks for what the rubric checks, states only limits equal to the meta's `word_limit`
# ({limit}: the most words, {over}: one more), and holds no word the rubric would count against
# a response that copied it (another mood, colour, size, category member or antonym-list word).
MOOD_ASKS = (
    "Write {a_mood} sentence about {s}.", "Write one sentence about {s} that sounds {mood}.",
    "Give me {a_mood} sentence about {s}.", "Make up {a_mood} sentence about {s}.",
    "Write one {mood} sentence that mentions {s}.", "Write a sentence about {s} in {a_mood} tone.",
    "Compose {a_mood} sentence about {s}.", "Using {s}, write {a_mood} sentence.",
    "Mention {s} in {a_mood} sentence.", "Write {a_mood} sentence. It should mention {s}.",
    "I need {a_mood} sentence about {s}.", "Create {a_mood} sentence about {s}.",
    "Write a sentence about {s} that feels {mood}.",
)
MOOD_ENDS = ("", " Use at most {limit} words.", " Keep it under {over} words.", " Use no more than {limit} words.",
             " One sentence is enough.")
STORY_ASKS = ("Read the story and answer the question.\n\nStory: {story}\n\nQuestion: {q}",
              "{story}\n\n{q} Answer in one sentence.")
LIST_ASKS = ("List {what}.", "Name {what}.", "Write down {what}.", "Give me {what}.", "Tell me {what}.",
             "Can you name {what}?", "Please list {what}.", "Write a list of {what}.",
             "Think of {what} and list them.", "Make a list of {what}.")
LIST_GROUPS = ("{n} {cat}", "{n} different {cat}")
LIST_EXCLUDES = (" other than {x}", " except {x}", " but not {x}", " apart from {x}", " besides {x}",
                 " that are not {x}")
LIST_ENDS = ("", " Answer in one sentence.", " Use at most {limit} words.", " Keep it under {over} words.",
             " Write them in one sentence.")
DESCRIBE_ASKS = (
    "Describe {s} in under {n} words.", "In fewer than {n} words, describe {s}.",
    "Write a short description (under {n} words) of {s}.", "Describe {s} in fewer than {n} words.",
    "Describe {s} using fewer than {n} words.", "Write a description of {s} in under {n} words.",
    "Give a description of {s} in fewer than {n} words.", "Using fewer than {n} words, describe {s}.",
    "Describe {s} in at most {limit} words.", "In at most {limit} words, describe {s}.",
    "Briefly describe {s} (fewer than {n} words).", "Describe {s}. Use fewer than {n} words.",
    "Describe {s} in no more than {limit} words.",
)
OPPOSITE_ASKS = (
    "What is the opposite of {w}?", "Give the opposite of the word {w}.", "Tell me the opposite of {w}.",
    "What word is the opposite of {w}?", "Which word means the opposite of {w}?", "Name the opposite of {w}.",
    "Give me a word that means the opposite of {w}.", "Find the opposite of the word {w}.",
    "Say what the opposite of {w} is.", "What is the opposite of the word {w}?",
    "Which word is the opposite of {w}?", "What word means the opposite of {w}?",
    "Can you tell me the opposite of {w}?",
)
OPPOSITE_QUOTES = ("'{}'", '"{}"', "{}")
OPPOSITE_ENDS = ("", " Answer in one sentence.", " Answer with a sentence.", " Reply in one sentence.",
                 " Answer in a complete sentence.", " Use at most {limit} words.", " Keep it under {over} words.")


def _limits(meta: dict) -> dict[str, int]:
    return {"limit": meta["word_limit"], "over": meta["word_limit"] + 1}


def _phrase(rng: random.Random, fields: dict, *options: tuple[str, ...]) -> str:
    """One phrasing from each of `options` in turn, joined and filled in with `fields`."""
    return "".join(rng.choice(o) for o in options).format(**fields)


def instruction(kind: str, rng: random.Random) -> tuple[str, dict]:
    """A new prompt of `kind`. -> (prompt, meta)."""
    if kind == "mood_sentence":
        mood, c, o = rng.choice(L.MOOD_NAMES), rng.choice(L.COLOURS), rng.choice(L.OBJECTS)
        meta = {"mood": mood, "subject": f"the {c} {o}", "subject_words": [c, o], "word_limit": 20}
        fields = {"mood": mood, "a_mood": L.a(mood), "s": meta["subject"], **_limits(meta)}
        return _phrase(rng, fields, MOOD_ASKS, MOOD_ENDS), meta
    if kind in ("story_where", "story_colour"):
        scene = S.make_scene(rng, rng.choice((1, 2, 3)))
        p = rng.choice(scene.people)
        story = S.story(rng, scene, rng.choice(("word", "cause", "both")))
        meta = {"story": story, "person": p.name, "facts": scene.to_meta(), "word_limit": 15}
        if kind == "story_where":
            q, meta["answer"] = f"Where is {p.name}?", f"the {p.place}"
        else:
            q, meta["answer"], meta["object"] = f"What colour is {p.name}'s {p.obj}?", p.colour, p.obj
        return rng.choice(STORY_ASKS).format(story=story, q=q), meta
    if kind == "list":
        cat, n = rng.choice(sorted(L.CATEGORIES)), rng.randint(2, 5)
        exclude = rng.choice(L.CATEGORIES[cat]) if rng.random() < 0.8 else ""
        meta = {"category": cat, "n": n, "exclude": exclude, "word_limit": 25}
        fields = {"n": L.NUMBER_WORDS[n], "cat": cat, "x": member_text(cat, exclude, many=True), **_limits(meta)}
        fields["what"] = _phrase(rng, fields, LIST_GROUPS, LIST_EXCLUDES if exclude else ("",))
        return _phrase(rng, fields, LIST_ASKS, LIST_ENDS), meta
    if kind == "describe":
        size, c, o, n = rng.choice(L.SIZES), rng.choice(L.COLOURS), rng.choice(L.OBJECTS), rng.choice((10, 12, 15))
        s = f"the {size} {c} {o}"
        meta = {"subject": s, "subject_words": [size, c, o], "size": size, "colour": c, "object": o,
                "word_limit": n - 1}  # "under n words": at most n - 1
        return _phrase(rng, {"s": s, "n": n, **_limits(meta)}, DESCRIBE_ASKS), meta
    if kind == "opposite":
        w = rng.choice(L.ANTONYM_WORDS)
        meta = {"word": w, "answer": L.OPPOSITE[w], "word_limit": 12}
        fields = {"w": rng.choice(OPPOSITE_QUOTES).format(w), **_limits(meta)}
        return _phrase(rng, fields, OPPOSITE_ASKS, OPPOSITE_ENDS), meta
    raise KeyError(kind)


def demonstration(kind: str, meta: dict, rng: random.Random) -> str:
    """A correct response (one of a few phrasings) to an instruction with this `meta`."""
    if kind == "mood_sentence":
        mood, (c, o) = meta["mood"], meta["subject_words"]
        n, place = rng.choice(L.NAMES), rng.choice(L.PLACES)
        m = L.MOODS[mood]
        return rng.choice((f"{n} {m['act']} when {L.pronoun(n)} saw the {c} {o} {L.at(place)}.",
                           f"The {c} {o} made {n} feel {mood}.",
                           f"{n} felt {rng.choice(m['syn'])} because the {c} {o} was {L.at(place)}.",
                           f"{n} felt {mood} after finding the {c} {o} {L.at(place)}."))
    if kind == "story_where":
        n, place = meta["person"], meta["answer"].removeprefix("the ")
        return rng.choice((f"{n} is {L.at(place)}.", f"{n} was {L.at(place)}.",
                           f"In the story, {n} is {L.at(place)}.", f"{n} spent the afternoon {L.at(place)}."))
    if kind == "story_colour":
        n, o, c = meta["person"], meta["object"], meta["answer"]
        return rng.choice((f"{n}'s {o} is {c}.", f"The {o} that {n} has is {c}.", f"It is {c}.",
                           f"{n} has {L.a(c + ' ' + o)}."))
    if kind == "list":
        cat, n = meta["category"], meta["n"]
        items = [member_text(cat, w) for w in L.sample(rng, L.CATEGORIES[cat], n, meta["exclude"])]
        return rng.choice((f"Here are {L.NUMBER_WORDS[n]} {cat}: {join_list(items)}.",
                           f"{L.cap(join_list(items))}.", f"You could say {join_list(items)}."))
    if kind == "describe":
        thing, place, n = f"{meta['size']} {meta['colour']} {meta['object']}", rng.choice(L.PLACES), rng.choice(L.NAMES)
        return rng.choice((f"The {thing} is {L.at(place)}.", f"It is {L.a(thing)} {L.at(place)}.",
                           f"This {thing} belongs to {n}.", f"{L.cap(L.a(thing))} that {n} likes."))
    if kind == "opposite":
        w, ans = meta["word"], meta["answer"]
        return rng.choice((f"The opposite of {w} is {ans}.", f"{L.cap(ans)} is the opposite of {w}.",
                           f"The word you want is {ans}."))
    raise KeyError(kind)


def corrupt(kind: str, meta: dict, defect: str, rng: random.Random, response: str | None = None) -> str:
    """A response with one defect: a demonstration for altered facts, or an edit of `response`."""
    base = response if response is not None else demonstration(kind, meta, rng)
    if defect == "too_long":
        out = base
        while len(out.split()) <= meta["word_limit"]:
            out += " " + FILLER
        return out
    if defect == "no_clean_end":
        words = base.rstrip(".").split()
        return " ".join(words[: max(2, len(words) - rng.randint(1, 2))])
    if defect == "banned_word":
        word = rng.choice(L.BANNED[:5])
        return base.replace(" the ", f" the {word} ", 1) if " the " in base else f"{L.cap(word)} question. {base}"
    if defect == "repetitive":
        words = base.rstrip(".").split()
        return " ".join(words + words[-3:] * 2) + "."
    m = dict(meta)
    if defect == "wrong_mood":
        m["mood"] = rng.choice(L.NEGATIVE_MOODS if L.MOODS[meta["mood"]]["pol"] > 0 else L.POSITIVE_MOODS)
    elif defect == "missing_subject":
        c, o = meta["subject_words"][-2:]
        m["subject_words"] = [*meta["subject_words"][:-2], c, L.other(rng, L.OBJECTS, o)]
        m["object"] = m["subject_words"][-1]
    elif defect == "false_fact" and kind in ("story_where", "story_colour"):
        p = meta["facts"][meta["person"]]
        m["answer"] = (f"the {L.other(rng, L.PLACES, p['place'])}" if kind == "story_where"
                       else L.other(rng, L.COLOURS, p["colour"]))
    elif defect == "false_fact" and kind == "list":
        m["n"] = meta["n"] + rng.choice((-1, 1)) if meta["n"] > 2 else meta["n"] + 1
    elif defect == "off_topic":
        items = [member_text(meta["category"], w) for w in L.sample(rng, L.CATEGORIES[meta["category"]],
                                                                meta["n"] - 1, meta["exclude"])]
        stray = rng.choice([c for c in sorted(L.CATEGORIES) if c != meta["category"]])
        items.insert(rng.randrange(len(items) + 1), member_text(stray, rng.choice(L.CATEGORIES[stray])))
        return f"{L.cap(join_list(items))}."
    elif defect == "false_fact" and kind == "describe":
        m["colour"] = L.other(rng, L.COLOURS, meta["colour"])
    elif defect == "false_fact" and kind == "opposite":
        m["answer"] = L.other(rng, tuple(L.OPPOSITE), meta["word"], meta["answer"])
    else:
        raise KeyError(f"{kind}: {defect}")
    return demonstration(kind, m, rng)


ALL_DEFECTS = tuple(sorted({d for ds in DEFECTS.values() for d in ds}))


def add_flaws(rows: list[dict], share: float, mix: dict[str, float], rng: random.Random) -> list[dict]:
    """Demonstrations with `share` of them (rounded, among the rows whose kind has a defect of
    positive weight in `mix`) given one defect: drawn by `mix`'s weights among the defects of the
    row's kind (`DEFECTS`); generic ones edit the demonstration itself, the others (wrong mood,
    missing subject, false fact, off topic) are a demonstration of altered facts. A flawed row
    carries `flaw` (the defect's name); the others are returned unchanged."""
    eligible = [i for i, r in enumerate(rows) if any(mix.get(d, 0) > 0 for d in DEFECTS.get(r["kind"], ()))]
    chosen = sorted(rng.sample(eligible, min(len(eligible), round(share * len(rows))))) if share > 0 else []
    out = list(rows)
    for i in chosen:
        r = rows[i]
        names = [d for d in DEFECTS[r["kind"]] if mix.get(d, 0) > 0]
        defect = rng.choices(names, weights=[mix[d] for d in names])[0]
        edit = r["response"] if defect in GENERIC_DEFECTS else None
        out[i] = {**r, "response": corrupt(r["kind"], r["meta"], defect, rng, response=edit), "flaw": defect}
    return out


def sample_responses(kind: str, meta: dict, rng: random.Random, k: int) -> list[str]:
    """K responses as a half-trained policy might give: 35% correct, else one or two defects."""
    out = []
    for _ in range(k):
        u = rng.random()
        if u < 0.35:
            out.append(demonstration(kind, meta, rng))
            continue
        first, second = rng.sample(DEFECTS[kind], 2)
        r = corrupt(kind, meta, first, rng)
        if u > 0.8 and second in GENERIC_DEFECTS:
            r = corrupt(kind, meta, second, rng, response=r)
        out.append(r)
    return out


def allocate(n: int, weights: dict[str, float]) -> dict[str, int]:
    """Split n into integer counts proportional to `weights` (largest remainder, ties by name)."""
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (counts[k] - exact[k], k))[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def make_instruction_splits(rng: random.Random, sizes: dict[str, int], seen: set[str]) -> dict[str, list[dict]]:
    """{split: rows}; every prompt (and every story in one) is new to `seen`. Rows of splits whose
    name starts with 'sft' carry a demonstration `response`."""
    out = {}
    for split, n in sizes.items():
        rows = []
        for kind, count in allocate(n, WEIGHTS).items():
            made = tries = 0
            while made < count:
                tries += 1
                if tries > 200 * count + 1000:
                    raise RuntimeError(f"world: too few distinct '{kind}' prompts for {split} (lower the sizes)")
                prompt, meta = instruction(kind, rng)
                key = meta.get("story", prompt)
                if key in seen or prompt in seen:
                    continue
                seen.update((key, prompt))
                row = {"kind": kind, "prompt": prompt, "meta": meta}
                if split.startswith("sft"):
                    row["response"] = demonstration(kind, meta, rng)
                rows.append(row)
                made += 1
        rng.shuffle(rows)
        out[split] = [{"id": f"{split}-{i:05d}", **r} for i, r in enumerate(rows)]
    return out
