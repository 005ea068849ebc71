"""The oracle labeler: a hidden rubric that scores a response to an instruction, and noisy rankings.

    from tasks.world.oracle import score, rank
    score(instruction, response)                  # float in [0, 1]
    rank(instruction, responses, noise, rng)      # indices, best first

`instruction` is a row of `instructions/*.jsonl`: its `kind` and `meta` (see
`tasks.world.instructions`). Words are compared lower-cased, letters only ("Anna's" -> anna, s).

Rubric: the score is the weighted share of checks passed.

  every kind (weight 1 each)
    clean_end      the text ends with one period ("." but not "..")
    length         at most meta.word_limit words (whitespace-separated)
    no_banned      none of BANNED (stupid, dumb, idiot, hate, ugly, kill, shut)
    not_repetitive no word trigram occurs twice
  per kind (weight 2 each)
    mood_sentence  mood: a word of the requested mood (the mood, a synonym, its action: "smiled")
                   and no mood word of the opposite polarity; subject: every subject word
    story_where    correct: the person's place; no_false: no other place or colour word
    story_colour   correct: the colour;         no_false: no other place or colour word
    list           count: exactly n distinct members of the category (plurals count);
                   on_topic: no member of another category and not the excluded member
    describe       subject: size, colour and object words; no_false: no other colour or size
    opposite       correct: the antonym; no_false: no other antonym-list word but the asked one
  any other kind (user instructions) is scored on the four common checks only.

A response with fewer than two words scores 0. So a correct answer scores 1; each wrong
kind of answer (wrong mood, missing subject, false fact, too long, no clean ending, banned
word, repetitive) loses at least one check.

Noise: `rank` samples a Plackett-Luce ranking with utilities score/noise (Gumbel-max trick),
so noise is a temperature in score units: 0 sorts by score (ties by index); large noise
is a random order. `DEFAULT_NOISE` is calibrated so that two independent labelers agree on
about 73% of response pairs (InstructGPT's inter-labeler agreement) for the default RL
prompts with responses from `instructions.sample_responses` (see the README, "The oracle labeler").
"""

from __future__ import annotations

import math
import random
import re

from tasks.world import lexicon as L

DEFAULT_NOISE = 0.09  # calibrated: two labelers agree on ~73% of pairs (README, "The oracle labeler")
WEIGHTS = {"clean_end": 1, "length": 1, "no_banned": 1, "not_repetitive": 1}
KIND_WEIGHT = 2
_PLACES, _COLOURS, _SIZES = set(L.PLACES), set(L.COLOURS), set(L.SIZES)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _members(category: str) -> dict[str, str]:
    """Every surface form (word, plural) of a category's members -> the member."""
    out = {}
    for w in L.CATEGORIES[category]:
        out[w] = out[L.plural(w)] = w
    return out


def checks(instruction: dict, response: str) -> dict[str, bool]:
    """The rubric's individual checks (name -> passed) for this response."""
    kind, meta = instruction.get("kind", ""), instruction.get("meta") or {}
    text = response.strip()
    toks = words(text)
    tok = set(toks)
    trigrams = list(zip(toks, toks[1:], toks[2:]))
    out = {
        "clean_end": text.endswith(".") and not text.endswith(".."),
        "length": len(text.split()) <= meta.get("word_limit", 30),
        "no_banned": not tok & set(L.BANNED),
        "not_repetitive": len(set(trigrams)) == len(trigrams),
    }
    if kind == "mood_sentence":
        mood = meta["mood"]
        opposite = L.polarity_words(-L.MOODS[mood]["pol"])
        out["mood"] = bool(tok & set(L.mood_words(mood))) and not tok & opposite
        out["subject"] = set(meta["subject_words"]) <= tok
    elif kind in ("story_where", "story_colour"):
        p = meta["facts"][meta["person"]]
        answer = p["place"] if kind == "story_where" else p["colour"]
        out["correct"] = answer in tok
        out["no_false"] = not tok & ((_PLACES | _COLOURS) - {p["place"], p["colour"]})
    elif kind == "list":
        members = _members(meta["category"])
        named = {members[t] for t in toks if t in members}
        stray = {t for c in L.CATEGORIES if c != meta["category"] for t in _members(c) if t in tok}
        out["count"] = len(named - {meta["exclude"]}) == meta["n"]
        out["on_topic"] = not stray and meta["exclude"] not in named
    elif kind == "describe":
        out["subject"] = set(meta["subject_words"]) <= tok
        out["no_false"] = not tok & ((_COLOURS - {meta["colour"]}) | (_SIZES - {meta["size"]}))
    elif kind == "opposite":
        out["correct"] = meta["answer"] in tok
        out["no_false"] = not tok & (set(L.OPPOSITE) - {meta["word"], meta["answer"]})
    return out


def score(instruction: dict, response: str) -> float:
    """The rubric's score of `response` in [0, 1] (1 = every check passed)."""
    if len(response.split()) < 2:
        return 0.0
    c = checks(instruction, response)
    w = {k: WEIGHTS.get(k, KIND_WEIGHT) for k in c}
    return sum(w[k] for k, ok in c.items() if ok) / sum(w.values())


def rank(instruction: dict, responses: list[str], noise: float, rng: random.Random) -> list[int]:
    """Indices of `responses`, best first: a Plackett-Luce sample with temperature `noise`."""
    scores = [score(instruction, r) for r in responses]
    if noise <= 0:
        return sorted(range(len(responses)), key=lambda i: (-scores[i], i))
    keys = [s / noise - math.log(-math.log(max(rng.random(), 1e-300))) for s in scores]
    return sorted(range(len(responses)), key=lambda i: -keys[i])


def pairwise_agreement(a: list[int], b: list[int]) -> tuple[int, int]:
    """(pairs ordered alike, pairs) for two rankings of the same items."""
    pa = {x: i for i, x in enumerate(a)}
    pb = {x: i for i, x in enumerate(b)}
    items = sorted(pa)
    pairs = [(x, y) for i, x in enumerate(items) for y in items[i + 1:]]
    same = sum((pa[x] < pa[y]) == (pb[x] < pb[y]) for x, y in pairs)
    return same, len(pairs)


def labeler_agreement(instructions: list[dict], responses: list[list[str]], noise: float,
                      rng: random.Random) -> float:
    """Share of response pairs two independent labelers (`rank` at `noise`) order alike."""
    same = total = 0
    for ins, rs in zip(instructions, responses):
        s, n = pairwise_agreement(rank(ins, rs, noise, rng), rank(ins, rs, noise, rng))
        same, total = same + s, total + n
    return same / max(total, 1)
