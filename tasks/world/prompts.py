"""Prompt tasks for zero/one/few-shot evaluation (GPT-2/3): rows of named fields and an answer.

A template (conf/, written elsewhere) turns a row's fields into text; `train` is the pool the
few-shot examples are drawn from, `test` what is scored. kind=choice rows carry `choices` and
the answer is exactly one of them (scored by comparing the choices' likelihoods); kind=generate
rows are scored by exact match of the generated answer.

The four labelled tasks appear again as choice tasks, plus five that need no fine-tuning,
only what pre-training on the world's corpus teaches: reading a story (where_is, colour_of,
mood_of), antonyms and counting.

In-context-only tasks (GPT-3's "learning a new task in context"): what they ask is in no
document of the corpus, so only the k examples of the prompt can teach it. `novel_word` (a
made-up word defined in the prompt, then used: "dakex means hot; the opposite of dakex is" cold)
and `word_map` (a thing's kind written as a made-up word, one fixed but arbitrary word per kind
that only the examples show) are data tasks flagged `in_context_only`; `UNSEEN_VARIANTS` are
templates (conf/prompt_eval.yaml) over another task's data whose label words the corpus never
uses. Every made-up word here ends in a consonant (`lexicon.eval_nonce`); the corpus's never do.
"""

from __future__ import annotations

import random

from tasks.world import lexicon as L
from tasks.world import stories as S
from tasks.world import tasks as T

PROMPT_TASKS = {  # in_context_only: written to task.json; the report judges these tasks apart
    "sentiment": {"kind": "choice", "fields": ["text"],
                  "description": "Is the review positive or negative? choices: positive, negative"},
    "entailment": {"kind": "choice", "fields": ["premise", "hypothesis"],
                   "description": "Does the premise make the hypothesis true (yes), false (no) or "
                                  "leave it open (maybe)? choices: yes, no, maybe"},
    "paraphrase": {"kind": "choice", "fields": ["text_a", "text_b"],
                   "description": "Do the two sentences mean the same? choices: yes, no"},
    "story_cloze": {"kind": "choice", "fields": ["context"],
                    "description": "Which ending fits the story? choices: four endings"},
    "where_is": {"kind": "generate", "fields": ["story", "person"],
                 "description": "Where is <person> in the story? answer: the place, e.g. 'the park'"},
    "colour_of": {"kind": "generate", "fields": ["story", "person", "object"],
                  "description": "What colour is <person>'s <object> in the story? answer: a colour, e.g. 'red'"},
    "mood_of": {"kind": "choice", "fields": ["story", "person"],
                "description": "How does <person> feel in the story (named, or only its cause told)? "
                               "choices: four moods"},
    "antonym": {"kind": "generate", "fields": ["word"],
                "description": "The opposite of <word>; answer: one word, e.g. 'cold' for 'hot'"},
    "count": {"kind": "generate", "fields": ["items", "target"],
              "description": "How many times does <target> appear in the comma-separated <items>? "
                             "answer: digits, e.g. '3'"},
    "novel_word": {"kind": "generate", "fields": ["word", "meaning"], "in_context_only": True,
                   "description": "<word> is a made-up word that means <meaning>; what is the opposite of <word>? "
                                  "answer: one word, e.g. 'cold' for a word that means 'hot'"},
    "word_map": {"kind": "choice", "fields": ["phrase"], "in_context_only": True,
                 "description": "The made-up word for the kind of thing <phrase> names (one fixed word per kind: "
                                "animals, foods, things, places; only the examples show which). choices: four words"},
}
for _spec in PROMPT_TASKS.values():
    _spec.setdefault("in_context_only", False)
# Templates over another prompt task's data, label words or format never in the corpus: template -> data task
UNSEEN_VARIANTS = {"sentiment_unseen": "sentiment", "entailment_unseen": "entailment",
                   "paraphrase_unseen": "paraphrase", "mood_of_unseen": "mood_of"}
IN_CONTEXT_ONLY = tuple(n for n, s in PROMPT_TASKS.items() if s["in_context_only"]) + tuple(UNSEEN_VARIANTS)
WORD_MAP = {"animals": "dakex", "foods": "mupoz", "things": "rilok", "places": "tenuk"}  # the kind -> its word
ENTAIL_WORDS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}
ANTONYM_FEWSHOT = 12  # antonym words kept for the few-shot pool; the rest are test words


def count_items(rng: random.Random) -> tuple[str, str, int]:
    """A comma-separated list with a repeated word (category lists never repeat one). -> (items, target, n)."""
    pool = L.ANIMALS if rng.random() < 0.5 else L.FOODS
    while True:
        target, *others = rng.sample(pool, 4)
        n = rng.randint(1, 4)
        words = [target] * n + [rng.choice(others) for _ in range(rng.randint(5, 8) - n)]
        if len(set(words)) < len(words):
            rng.shuffle(words)
            return ", ".join(words), target, n


def as_prompt_row(task: str, row: dict) -> dict | None:
    """A labelled task's row (tasks/<task>/ contract) posed as the prompt task of the same name:
    its fields, choices and answer. None for a task the world does not pose as a prompt."""
    label = row["label"]
    if task == "sentiment":
        return {"text": row["text"], "choices": ["positive", "negative"], "answer": label}
    if task == "entailment":
        return {"premise": row["premise"], "hypothesis": row["hypothesis"], "choices": ["yes", "no", "maybe"],
                "answer": ENTAIL_WORDS[label]}
    if task == "paraphrase":
        return {"text_a": row["text_a"], "text_b": row["text_b"], "choices": ["yes", "no"], "answer": "yes" if label == "same" else "no"}
    if task == "story_cloze":
        return {"context": row["context"], "choices": row["choices"], "answer": row["choices"][label]}
    return None


def item(name: str, rng: random.Random, i: int) -> tuple[dict, list[str]]:
    """The i-th item of a split (labels cycle with i). -> (row, distinctive texts for the leak check)."""
    if name in T.TASKS:
        spec = T.TASKS[name]
        labels = spec.get("labels") or list(range(spec["n_choices"]))
        row = T.example(name, rng, labels[i % len(labels)])
        leak = T.leak_texts(spec["type"], row)
        return as_prompt_row(name, row), leak
    if name == "count":
        items, target, n = count_items(rng)
        return {"items": items, "target": target, "answer": str(n)}, [items]
    if name == "novel_word":  # the made-up word is the item (unique); it never occurs in the corpus
        word, meaning = L.eval_nonce(rng), rng.choice(L.ANTONYM_WORDS)
        return {"word": word, "meaning": meaning, "answer": L.OPPOSITE[meaning]}, [word]
    if name == "word_map":  # "red fox": knowledge the corpus teaches on purpose, so no leak text
        kind = list(WORD_MAP)[i % len(WORD_MAP)]
        phrase = f"{rng.choice(L.COLOURS)} {rng.choice(L.CATEGORIES[kind])}"
        return {"phrase": phrase, "choices": list(WORD_MAP.values()), "answer": WORD_MAP[kind]}, []
    scene = S.make_scene(rng, rng.choice((2, 2, 3)))
    p = rng.choice(scene.people)
    if name == "where_is":
        text = S.story(rng, scene, rng.choice(("word", "cause", "both")))
        return {"story": text, "person": p.name, "answer": f"the {p.place}"}, [text]
    if name == "colour_of":
        text = S.story(rng, scene, rng.choice(("word", "cause", "both")))
        return {"story": text, "person": p.name, "object": p.obj, "answer": p.colour}, [text]
    if name == "mood_of":
        text = S.story(rng, scene, rng.choice(("word", "cause")))
        others = [q.mood for q in scene.people if q is not p]
        choices = others + L.sample(rng, L.MOOD_NAMES, 3 - len(others), p.mood, *others) + [p.mood]
        rng.shuffle(choices)
        return {"story": text, "person": p.name, "choices": choices, "answer": p.mood}, [text]
    raise KeyError(name)


def make_prompt_splits(name: str, rng: random.Random, n_train: int, n_test: int,
                       seen: set[str]) -> dict[str, list[tuple[dict, list[str]]]]:
    """{'train': [(row, leak texts)], 'test': [...]}, items unique across everything in `seen`."""
    if name == "antonym":  # a fixed vocabulary: split the words themselves
        words = list(L.ANTONYM_WORDS)
        rng.shuffle(words)
        k = min(n_train, ANTONYM_FEWSHOT)
        rows = [({"word": w, "answer": L.OPPOSITE[w]}, []) for w in words]
        return {"train": rows[:k], "test": rows[k:k + n_test]}
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        while len(rows) < n:
            row, leak = item(name, rng, len(rows))
            key = "\n".join(sorted(leak)) or name + "/" + "/".join(row[f] for f in PROMPT_TASKS[name]["fields"])
            if key not in seen:
                seen.add(key)
                rows.append((row, leak))
        rng.shuffle(rows)
        out[split] = rows
    return out
