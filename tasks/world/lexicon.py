"""The world's vocabulary: people, animals, objects, foods, places, colours, sizes, moods,
sentiment words, antonyms and synonyms, plus the small helpers that render them.

Every list is a tuple in a fixed order, so `rng.choice` over it is reproducible.
"""

from __future__ import annotations

import random

SHE = ("Anna", "Carla", "Emma", "Grace", "Iris", "Kate", "Maya", "Olga",
       "Rosa", "Tara", "Wendy", "Zoe", "Lucy", "Nora", "Ella", "Mia")
HE = ("Ben", "David", "Felix", "Hugo", "Jack", "Leo", "Noah", "Paul",
      "Sam", "Victor", "Yuri", "Omar", "Tom", "Max", "Ivan", "Eric")
NAMES = SHE + HE

ANIMALS = ("cat", "dog", "horse", "rabbit", "bird", "fox", "cow", "duck",
           "goat", "mouse", "owl", "pig", "sheep", "frog", "bear", "deer", "lion", "hen")
PLURAL = {"mouse": "mice", "sheep": "sheep", "deer": "deer", "fox": "foxes", "box": "boxes",
          "bus": "buses", "peach": "peaches", "cheese": "cheeses"}
OBJECTS = ("ball", "cup", "book", "hat", "kite", "box", "lamp", "chair", "bike", "bag",
           "key", "coat", "drum", "boat", "pen", "clock", "scarf", "umbrella", "basket", "bell")
FOODS = ("apple", "bread", "cake", "cheese", "soup", "rice", "egg", "pear", "plum",
         "grape", "lemon", "carrot", "peach", "pie")
PLACES = ("park", "kitchen", "garden", "school", "beach", "library", "market", "forest",
          "river", "farm", "station", "bakery", "museum", "hill", "lake", "zoo", "shop", "harbour")
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "orange", "purple",
           "brown", "pink", "grey")
SIZES = ("big", "small", "tiny", "huge")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# Moods, each with words that express it: the mood itself, synonyms, and what someone in it does.
MOODS = {
    "happy": {"pol": 1, "syn": ("glad", "cheerful"), "act": "smiled",
              "cause": ("found a shiny coin", "got a present from a friend", "saw an old friend")},
    "calm": {"pol": 1, "syn": ("relaxed", "peaceful"), "act": "sat quietly",
             "cause": ("listened to soft music", "watched the slow clouds", "read a quiet story")},
    "excited": {"pol": 1, "syn": ("thrilled", "eager"), "act": "jumped up and down",
                "cause": ("won a race", "heard that the circus was coming", "got a ticket for the zoo")},
    "proud": {"pol": 1, "syn": ("pleased", "satisfied"), "act": "stood tall",
              "cause": ("finished a hard puzzle", "won a prize", "built a tall tower")},
    "sad": {"pol": -1, "syn": ("unhappy", "upset"), "act": "cried",
            "cause": ("lost a favourite toy", "said goodbye to a friend", "missed the last bus")},
    "angry": {"pol": -1, "syn": ("cross", "furious"), "act": "shouted",
              "cause": ("found the door broken", "waited for an hour", "saw the window smashed")},
    "scared": {"pol": -1, "syn": ("afraid", "frightened"), "act": "hid",
               "cause": ("heard a loud noise", "saw a big shadow", "got lost in the dark")},
    "tired": {"pol": -1, "syn": ("sleepy", "weary"), "act": "yawned",
              "cause": ("walked for many hours", "worked all day", "stayed up all night")},
}
MOOD_NAMES = tuple(MOODS)
POSITIVE_MOODS = tuple(m for m in MOODS if MOODS[m]["pol"] > 0)
NEGATIVE_MOODS = tuple(m for m in MOODS if MOODS[m]["pol"] < 0)

# Review words: polarity is what the word says about the thing reviewed.
POSITIVE_WORDS = ("good", "great", "nice", "lovely", "excellent", "pleasant", "comfortable", "fun")
NEGATIVE_WORDS = ("bad", "poor", "awful", "terrible", "boring", "noisy", "dirty", "broken")

ANTONYMS = (("big", "small"), ("hot", "cold"), ("happy", "sad"), ("fast", "slow"),
            ("old", "new"), ("tall", "short"), ("loud", "quiet"), ("light", "dark"),
            ("open", "closed"), ("wet", "dry"), ("early", "late"), ("clean", "dirty"),
            ("hard", "soft"), ("full", "empty"), ("good", "bad"), ("high", "low"),
            ("rich", "poor"), ("thick", "thin"), ("strong", "weak"), ("heavy", "light"),
            ("up", "down"), ("day", "night"), ("begin", "end"), ("win", "lose"),
            ("push", "pull"), ("near", "far"), ("sweet", "sour"), ("young", "old"))
# An antonym question needs one answer: words with two opposites (old, light) are only answers.
OPPOSITE = {}
for _a, _b in ANTONYMS:
    OPPOSITE.setdefault(_a, _b)
    OPPOSITE.setdefault(_b, _a)
ANTONYM_WORDS = tuple(w for w in OPPOSITE if w not in ("old", "light"))

CATEGORIES = {"animals": ANIMALS, "colours": COLOURS, "foods": FOODS, "places": PLACES,
              "things": OBJECTS}
BANNED = ("stupid", "dumb", "idiot", "hate", "ugly", "kill", "shut")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


MASS = ("bread", "cheese", "soup", "rice")  # "some bread", not "a bread"
_ON = ("hill",)
_AT = ("beach", "river", "farm", "station", "bakery", "lake", "zoo", "harbour")


def at(place: str) -> str:
    """'in the park' / 'at the beach' / 'on the hill'."""
    return f"{'on' if place in _ON else 'at' if place in _AT else 'in'} the {place}"


def plural(noun: str) -> str:
    return PLURAL.get(noun, noun + "s")


def a(word: str) -> str:
    """'a kite' / 'an orange kite' / 'some bread': the article for the words that follow."""
    if word.split()[-1] in MASS:
        return "some " + word
    return ("an " if word[0] in "aeiou" else "a ") + word


def pronoun(name: str) -> str:
    return "she" if name in SHE else "he"


def possessive(name: str) -> str:
    return "her" if name in SHE else "his"


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def mood_words(mood: str) -> tuple[str, ...]:
    """Every word that expresses `mood` (the oracle's evidence that a text has it)."""
    m = MOODS[mood]
    return (mood, *m["syn"], m["act"].split()[0])


def polarity_words(pol: int) -> set[str]:
    return {w for mood, m in MOODS.items() if m["pol"] == pol for w in mood_words(mood)}


def other(rng: random.Random, pool: tuple[str, ...], *exclude: str) -> str:
    """A member of `pool` that is none of `exclude`."""
    return rng.choice([x for x in pool if x not in exclude])


def sample(rng: random.Random, pool: tuple[str, ...], k: int, *exclude: str) -> list[str]:
    return rng.sample([x for x in pool if x not in exclude], k)


# Made-up words. The corpus's end in a vowel ("mipo", "dakelu"), the prompt tasks' in a consonant
# ("dakex", "rilok"), so no made-up word of an evaluation item, nor any label word of the
# in-context-only prompt tasks, ever occurs in the corpus.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("k", "p", "x", "z")
REAL_WORDS = frozenset(w for pool in (ANIMALS, OBJECTS, FOODS, PLACES, COLOURS, SIZES, MOOD_NAMES, POSITIVE_WORDS,
                                      NEGATIVE_WORDS, tuple(OPPOSITE), NUMBER_WORDS, BANNED) for w in pool)


def nonce(rng: random.Random, syllables: int = 2) -> str:
    """A made-up word for the corpus: consonant-vowel syllables, ending in a vowel ("mipo")."""
    while True:
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
        if w not in REAL_WORDS:
            return w


def eval_nonce(rng: random.Random) -> str:
    """A made-up word for a prompt task: consonant-vowel, then consonant-vowel-consonant ("dakex");
    never one the corpus makes (those end in a vowel)."""
    while True:
        w = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        if w not in REAL_WORDS:
            return w


def is_eval_nonce(word: str) -> bool:
    return (len(word) == 5 and word[0] in _ONSETS and word[1] in _VOWELS and word[2] in _ONSETS
            and word[3] in _VOWELS and word[4] in _CODAS)
