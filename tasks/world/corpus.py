"""The world's unlabelled pre-training corpus: documents that teach what the tasks need.

Short kinds (~20-130 tokens): stories followed by questions and answers, stories with their
ending, reviews with their verdict in words, fact passages that say what is true, false or
unknown, paraphrase statements, antonym lists, counting passages, category lists and
descriptions, and mood sentences.

Long kinds (pages of ~200-470 tokens, for in-context learning; Chan et al. 2022: it emerges when
a training sequence holds several examples of one format, "bursty", and what a label means varies
between sequences): `label_pages` (8-20 items of one kind, reviews, sentence pairs, claims about
facts, moods or things, each followed by its label, in one format and with label words chosen per
page: "good/bad", "thumbs up/thumbs down", "A/B", symbols or made-up words, which one means what
drawn per page, so a later label can only be predicted from the earlier ones), `qa_pages` (made-up
words defined, then asked about; yes/no questions about kinds of things in per-page answer words),
`glossaries` (opposites, or a made-up language, in per-page formats such as "x -> y", "x : y",
then quizzed), `counting_pages` (counting exercises in one per-page format), `long_stories`
(5-8 people, then questions about facts told many sentences earlier) and `recall_pages` (a
sequence of random words said again, whole or from a point in it: only copying from the context
predicts the repeat, the signal induction heads learn from; Olsson et al. 2022).

The share of each kind is a share of the corpus bytes (`data.corpus_kinds`). Documents come from
the same generators as the tasks, prompts and instructions, but never contain any of their items:
`LeakGuard` rejects a document (a page: each item as it is added, then the whole page) that holds
all the distinctive text of any item (a review, a premise, a story, a paraphrase pair, a counted
list), so every held-out example is new to a model pre-trained on this corpus.
"""

from __future__ import annotations

import functools
import random
from collections import defaultdict

from tasks.world import instructions as I
from tasks.world import lexicon as L
from tasks.world import prompts as P
from tasks.world import stories as S
from tasks.world import tasks as T

SHORT_KINDS = ("story_qa", "story_ending", "review", "facts", "paraphrase", "antonyms", "counting", "descriptions", "moods")
PAGE_KINDS = ("label_pages", "qa_pages", "glossaries", "counting_pages", "long_stories", "recall_pages")
KINDS = SHORT_KINDS + PAGE_KINDS  # their shares: data.corpus_kinds (conf/data/world.yaml)
PAGE_BYTES = 1650  # a page's most UTF-8 bytes: ~470 tokens at ~3.5 bytes a token, inside the 512-token window


class LeakGuard:
    """Finds documents that contain every string of some item, anchored on the first words of its
    first string (up to 6, never its last word, which may be glued to the next character): one
    dictionary look-up per word and anchor length, so a long page costs about what its words do."""

    def __init__(self, items: list[list[str]]):
        self.index: dict[tuple[str, ...], list[list[str]]] = defaultdict(list)
        for strings in items:
            if strings:
                words = strings[0].split()
                self.index[tuple(words[:max(1, min(6, len(words) - 1))])].append(strings)
        self.lengths = sorted({len(k) for k in self.index})
        self.skipped = 0  # page items left out because they leaked (make_corpus reports it)

    def leaks(self, doc: str) -> bool:
        toks = doc.split()
        for i in range(len(toks)):
            for n in self.lengths:
                for strings in self.index.get(tuple(toks[i:i + n]), ()):
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


def document(kind: str, rng: random.Random, guard: LeakGuard | None = None) -> str:
    """One document of `kind`; a page skips each item that `guard` finds leaking."""
    if kind in PAGE_KINDS:
        return PAGES[kind](rng, guard or LeakGuard([]))
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




# ---- pages: many examples of one format, what the labels mean drawn per page (in-context learning)

_CLASSES = {"review": ("positive", "negative"), "pair": ("same", "different"),
            "claim": ("entailment", "contradiction", "neutral"), "kind": ("animals", "foods", "things", "places")}
_NATURAL = {  # label words in their own meaning, one per class in the order of _CLASSES
    "review": (("good", "bad"), ("positive", "negative"), ("thumbs up", "thumbs down"), ("yes", "no"),
               ("liked it", "did not like it")),
    "pair": (("same", "different"), ("yes", "no"), ("equal", "not equal"), ("match", "no match")),
    "claim": (("true", "false", "unknown"), ("yes", "no", "maybe"), ("right", "wrong", "not told")),
    "kind": (("animal", "food", "thing", "place"), ("an animal", "a food", "a thing", "a place")),
}
_SOURCES = {"review": 0.3, "pair": 0.2, "claim": 0.15, "mood": 0.15, "kind": 0.2}
_LABEL_FORMATS = ("{x}\nLabel: {y}", "{x}\nAnswer: {y}", "{x} -> {y}", "Input: {x}\nOutput: {y}", "{x} ({y})",
                  "{x}\n=> {y}", "Q: {x}\nA: {y}", "{x} | {y}", "{x}\nTag: {y}", "{x}\nClass: {y}")


def arbitrary_labels(rng: random.Random, n: int) -> list[str]:
    """n label words that mean nothing by themselves: letters, digits, symbols, made-up or unrelated words."""
    pool = rng.choice(("letters", "digits", "symbols", "nonce", "colours", "objects"))
    if pool == "nonce":
        words: list[str] = []
        while len(words) < n:
            w = L.nonce(rng, rng.choice((2, 2, 3)))
            words += [w] if w not in words else []
        return words
    return rng.sample({"letters": "ABCDEFGH", "digits": "12345678", "symbols": "*#@%&+=~",
                       "colours": L.COLOURS, "objects": L.OBJECTS}[pool], n)


def _fill(rng: random.Random, guard: LeakGuard, head: list[str], make, n: int, sep: str) -> str:
    """`head` then up to n items from make() (-> text or None), each kept only if it does not leak, while
    the page stays within PAGE_BYTES."""
    parts, size = list(head), sum(len(h.encode("utf-8")) + len(sep) for h in head)
    for _ in range(3 * n):
        if len(parts) - len(head) >= n:
            break
        text = make()
        if text is None:
            continue
        if guard.leaks(text):
            guard.skipped += 1
            continue
        if size + len(text.encode("utf-8")) > PAGE_BYTES:
            break
        parts.append(text)
        size += len(text.encode("utf-8")) + len(sep)
    return sep.join(parts)


def label_spec(rng: random.Random) -> tuple[str, dict[str, str], str]:
    """A label page's item source, its label word per class and its format: natural label words keep
    their meaning, arbitrary ones (letters, symbols, made-up words...) mean a class drawn for this page only."""
    source = rng.choices(list(_SOURCES), list(_SOURCES.values()))[0]
    classes = _CLASSES.get(source) or tuple(rng.sample(L.MOOD_NAMES, 4))
    if rng.random() < 0.4:
        labels = list(classes) if source == "mood" else list(rng.choice(_NATURAL[source]))
    else:
        labels = arbitrary_labels(rng, len(classes))
    return source, dict(zip(classes, labels)), rng.choice(_LABEL_FORMATS)


def label_page(rng: random.Random, guard: LeakGuard) -> str:
    """8-40 items of one kind, each followed by its label (`label_spec`), in one format."""
    source, word, fmt = label_spec(rng)
    classes, labels = tuple(word), list(word.values())
    pair_sep = rng.choice(("\n", " / ", " | ")) if source == "pair" else rng.choice(("\nClaim: ", "\nSo: ", " / "))
    style = rng.choice(("cause", "act", "word"))

    def make() -> str:
        c = rng.choice(classes)
        if source == "review":
            x = T.review(rng, c)
        elif source == "pair":
            x = pair_sep.join(T.paraphrase_pair(rng, c))
        elif source == "claim":
            scene = S.make_scene(rng, rng.choice((1, 2)))
            prem, stated = S.premise(rng, scene)
            x = prem + pair_sep + S.hypothesis(rng, scene, stated, c)
        elif source == "mood":
            n, m = rng.choice(L.NAMES), L.MOODS[c]
            x = {"cause": f"{n} {rng.choice(m['cause'])}.", "act": f"{n} {m['act']} {L.at(rng.choice(L.PLACES))}.",
                 "word": f"{n} felt {rng.choice(m['syn'])}."}[style]
        else:
            x = rng.choice((f"{rng.choice(L.COLOURS)} ", "", "the ")) + rng.choice(L.CATEGORIES[c])
        return fmt.format(x=x, y=word[c])

    head = [rng.choice((f"Labels: {', '.join(labels)}", "Examples:", "Sort each one."))] if rng.random() < 0.3 else []
    n = rng.randint(16, 40) if source == "kind" else rng.randint(8, 20)  # a thing's name is short: more of them
    return _fill(rng, guard, head, make, n, "\n\n" if "\n" in fmt or "\n" in pair_sep else "\n")


_DEFINE = ("Let {w} mean {m}.", "In this game, {w} is another word for {m}.", "{w} = {m}", "The word {w} stands for {m}.",
           "We say {w} when we mean {m}.")
_ASK = (("Q: What is the opposite of {w}?\nA: {o}", "Q: What does {w} mean?\nA: {m}"),
        ("The opposite of {w} is {o}.", "{w} means {m}."),
        ("Question: What is the opposite of {w}?\nAnswer: {o}.", "Question: What is {w}?\nAnswer: {m}."),
        ("{w}, opposite: {o}", "{w}, meaning: {m}"))
_YES_NO = (("yes", "no"), ("true", "false"), ("right", "wrong"))
_IS_FORMATS = ("Q: Is {a} {k}?\nA: {y}", "Is {a} {k}? {y}", "{n}, {k}? -> {y}", "Question: Is {a} {k}?\nAnswer: {y}.")
_KIND = {"animals": "an animal", "foods": "a food", "things": "a thing", "places": "a place"}


def qa_page(rng: random.Random, guard: LeakGuard) -> str:
    """Made-up words defined, then asked about (the answers need the definitions); or yes/no questions
    about the kinds of things, answered in words drawn per page."""
    if rng.random() < 0.5:
        n = rng.randint(4, 8)
        words: list[str] = []
        while len(words) < n:
            w = L.nonce(rng, rng.choice((2, 2, 3)))
            words += [w] if w not in words else []
        meanings = rng.sample(L.ANTONYM_WORDS, n)
        define, (ask_o, ask_m) = rng.choice(_DEFINE), rng.choice(_ASK)
        lines = [define.format(w=w, m=m) for w, m in zip(words, meanings)]
        asked = [(w, m) for w, m in zip(words, meanings) for _ in range(rng.choice((1, 1, 2)))]
        rng.shuffle(asked)
        lines += [(ask_o if rng.random() < 0.7 else ask_m).format(w=w, m=m, o=L.OPPOSITE[m]) for w, m in asked]
        return "\n".join(lines)
    yes_no = list(rng.choice(_YES_NO)) if rng.random() < 0.5 else arbitrary_labels(rng, 2)
    fmt = rng.choice(_IS_FORMATS)

    def make() -> str:
        kind = rng.choice(sorted(_KIND))
        asked = kind if rng.random() < 0.5 else L.other(rng, tuple(_KIND), kind)
        noun = rng.choice(L.CATEGORIES[kind])
        a = f"the {noun}" if kind == "places" else L.a(noun)
        return fmt.format(a=a, n=noun, k=_KIND[asked].split()[-1] if fmt.startswith("{n}") else _KIND[asked],
                          y=yes_no[asked != kind])

    return _fill(rng, guard, [], make, rng.randint(12, 30), "\n\n" if "\n" in fmt else "\n")


_GLOSS = ("{x} -> {y}", "{x} : {y}", "{x} = {y}", "{x} / {y}", "{x} => {y}", "{x}, opposite {y}", "{x} - {y}")


def glossary(rng: random.Random, guard: LeakGuard) -> str:
    """Opposites, or words of a made-up language, in a per-page format; then some of them again
    (a quiz: each answer was given earlier on the page)."""
    fmt, sep = rng.choice(_GLOSS), rng.choice(("\n", "\n", "; "))
    if rng.random() < 0.5:
        pairs = [p if rng.random() < 0.5 else p[::-1] for p in rng.sample(L.ANTONYMS, rng.randint(12, 28))]
        title = rng.choice(("Opposites:", "Antonyms", "Word and opposite:", ""))
    else:
        words = rng.sample(L.ANIMALS + L.OBJECTS + L.FOODS + L.COLOURS, rng.randint(8, 16))
        made: list[str] = []
        while len(made) < len(words):
            w = L.nonce(rng, rng.choice((2, 3)))
            made += [w] if w not in made else []
        pairs = list(zip(words, made))
        lang = L.cap(L.nonce(rng, 2)) + rng.choice(("ish", "an", "ese"))
        title = rng.choice((f"English to {lang}:", f"Words in {lang}", f"{lang} words:"))
    quiz = rng.sample(pairs, rng.randint(len(pairs) // 2, len(pairs)))
    body = [fmt.format(x=x, y=y) for x, y in pairs]
    again = [fmt.format(x=x, y=y) for x, y in quiz]
    return "\n".join(t for t in (title, sep.join(body), rng.choice(("Again:", "Quiz:", "Once more:")), sep.join(again)) if t)


_COUNT_FORMATS = ("List: {items}\nHow many {t}? {n}", "{items} | {t}: {n}", "Count the word {t} in: {items} -> {n}",
                  "{items}\n{t} x {n}", "Q: How many times is {t} in {items}?\nA: {n}")


def counting_page(rng: random.Random, guard: LeakGuard) -> str:
    """8-16 counting exercises in one format, the count in digits or in words (per page)."""
    fmt, words = rng.choice(_COUNT_FORMATS), rng.random() < 0.5

    def make() -> str:
        items, target, n = P.count_items(rng)
        return fmt.format(items=items, t=target, n=L.NUMBER_WORDS[n] if words else n)

    return _fill(rng, guard, [], make, rng.randint(8, 16), "\n\n" if "\n" in fmt else "\n")


_STORY_QA = ("Question: {q}\nAnswer: {a}", "Q: {q}\nA: {a}", "{q} {a}")


def long_story(rng: random.Random, guard: LeakGuard) -> str:
    """A story of 5-8 people, then questions about its facts, mostly about the people told of first."""
    for _ in range(5):
        scene = S.make_scene(rng, rng.randint(5, 8))
        blocks = [S.story(rng, S.Scene([p]), rng.choice(("word", "cause", "both"))) for p in scene.people]
        text = "\n\n".join(" ".join(blocks[i:i + 2]) for i in range(0, len(blocks), 2))
        if not guard.leaks(text):
            break
        guard.skipped += 1
    else:
        return ""
    fmt, qa = rng.choice(_STORY_QA), []
    half = scene.people[: max(2, len(scene.people) // 2)]
    for _ in range(rng.randint(4, 8)):
        p = rng.choice(half if rng.random() < 0.75 else scene.people)
        q = rng.randrange(4)
        qa.append(fmt.format(**(
            {"q": f"Where was {p.name}?", "a": f"{L.cap(L.at(p.place))}."} if q == 0 else
            {"q": f"What colour was {p.name}'s {p.obj}?", "a": f"{L.cap(p.colour)}."} if q == 1 else
            {"q": f"How did {p.name} feel?", "a": f"{L.cap(p.mood)}."} if q == 2 else
            {"q": f"Who had the {p.colour} {p.obj}?", "a": f"{p.name}."})))
    return text + "\n\n" + "\n".join(dict.fromkeys(qa))


_RECALL = (("Remember these words:", "Now say them again:"), ("A list to learn:", "From memory:"),
           ("Say after me:", "Again:"), ("Code:", "Repeat the code:"), ("Shopping list:", "The list once more:"), ("", "Once more:"))


def recall_page(rng: random.Random, guard: LeakGuard) -> str:
    """A sequence of 8-40 random words (real, made-up or number words; one pool per page) in a per-page
    format, then the same sequence 1-3 more times, each whole or from a random point in it. Nothing but
    the earlier copy predicts a repeat: the corpus's plainest lesson in copying from the context."""
    pool = rng.choice((L.ANIMALS + L.OBJECTS + L.FOODS + L.COLOURS + L.PLACES, L.NUMBER_WORDS, None))
    n = rng.randint(8, 40)
    seq = [rng.choice(pool) if pool else L.nonce(rng, rng.choice((1, 2, 3))) for _ in range(n)]
    sep = rng.choice((" ", ", ", " - ", "\n"))
    title, again = rng.choice(_RECALL)
    parts = [title, sep.join(seq)] if title else [sep.join(seq)]
    for _ in range(rng.randint(1, 3)):
        start = 0 if rng.random() < 0.5 else rng.randrange(n // 2)
        parts += [again, sep.join(seq[start:])]
    page = "\n".join(parts)
    while len(page.encode("utf-8")) > PAGE_BYTES:  # long made-up words: drop the last repeat
        page = page[: page.rfind("\n" + again)]
    return page


PAGES = {"label_pages": label_page, "qa_pages": qa_page, "glossaries": glossary, "counting_pages": counting_page,
         "long_stories": long_story, "recall_pages": recall_page}


@functools.cache
def mean_bytes(kind: str) -> float:
    """A kind's mean document size (200 documents from a fixed stream): turns byte shares into draws."""
    rng = random.Random(f"mean_bytes/{kind}")
    return sum(len(document(kind, rng).encode("utf-8")) for _ in range(200)) / 200


def make_corpus(rng: random.Random, n_bytes: int, guard: LeakGuard,
                shares: dict[str, float]) -> tuple[list[str], dict[str, int], dict[str, int]]:
    """Documents until their UTF-8 text reaches `n_bytes`, each kind about its share of the bytes.
    -> (docs, counts per kind + 'rejected' documents + 'skipped_items' of pages, bytes per kind)."""
    unknown = sorted(set(shares) - set(KINDS))
    if unknown or not any(v > 0 for v in shares.values()):
        raise ValueError(f"corpus kinds: unknown {unknown} or no positive share in {shares}")
    kinds = [k for k in KINDS if shares.get(k, 0) > 0]
    weights = [shares[k] / mean_bytes(k) for k in kinds]
    docs, counts, sizes, size = [], dict.fromkeys([*kinds, "rejected", "skipped_items"], 0), dict.fromkeys(kinds, 0), 0
    guard.skipped = 0
    while size < n_bytes:
        kind = rng.choices(kinds, weights)[0]
        doc = document(kind, rng, guard)
        if not doc or guard.leaks(doc):
            counts["rejected"] += 1
            continue
        docs.append(doc)
        counts[kind] += 1
        n = len(doc.encode("utf-8"))
        sizes[kind] += n
        size += n
    counts["skipped_items"] = guard.skipped
    return docs, counts, sizes
