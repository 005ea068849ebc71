"""Scenes (who is where, with what, feeling how) and the texts rendered from them.

A `Scene` holds the facts; every text about it (a story, a premise, a story ending, a
question) is rendered from those facts, so the facts inside one story are always consistent
and the oracle can check a response against them (`Scene.to_meta`).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from tasks.world import lexicon as L


@dataclass
class Person:
    name: str
    place: str  # a PLACES word, rendered "the park"
    mood: str  # a MOODS key
    cause: str  # why they feel `mood`, e.g. "found a shiny coin"
    obj: str  # the thing they have, an OBJECTS word
    colour: str
    size: str


@dataclass
class Scene:
    people: list[Person]

    def person(self, name: str) -> Person:
        return next(p for p in self.people if p.name == name)

    def to_meta(self) -> dict:
        """The facts as plain JSON (what the oracle reads from an instruction's `meta`)."""
        return {p.name: {k: v for k, v in asdict(p).items() if k != "name"} for p in self.people}


def make_scene(rng: random.Random, n_people: int) -> Scene:
    """People with distinct names, places, objects, colours and moods (so each question has one answer)."""
    names = rng.sample(L.NAMES, n_people)
    places = rng.sample(L.PLACES, n_people)
    objs = rng.sample(L.OBJECTS, n_people)
    colours = rng.sample(L.COLOURS, n_people)
    moods = rng.sample(L.MOOD_NAMES, n_people)
    people = [Person(n, pl, m, rng.choice(L.MOODS[m]["cause"]), o, c, rng.choice(L.SIZES))
              for n, pl, o, c, m in zip(names, places, objs, colours, moods)]
    return Scene(people)


def place_sentence(rng: random.Random, p: Person) -> str:
    return rng.choice((
        f"{p.name} went to the {p.place}.",
        f"{p.name} was {L.at(p.place)}.",
        f"{p.name} spent the afternoon {L.at(p.place)}.",
        f"{p.name} walked to the {p.place}.",
    ))


def object_sentence(rng: random.Random, p: Person) -> str:
    thing = f"{p.colour} {p.obj}"  # the size stays unstated: describe-instructions give their own
    return rng.choice((
        f"{p.name} had {L.a(thing)}.",
        f"{p.name} took {L.possessive(p.name)} {thing}.",
        f"{p.name} carried {L.a(thing)}.",
        f"{p.name} brought {L.a(thing)}.",
    ))


def mood_sentence(rng: random.Random, p: Person, style: str) -> str:
    """style: 'word' (the mood is named), 'cause' (only the cause: the mood must be inferred), 'both'."""
    m = L.MOODS[p.mood]
    named = rng.choice((f"{p.name} was {p.mood}.", f"{p.name} felt {p.mood}.",
                        f"{p.name} felt {rng.choice(m['syn'])}."))
    if style == "word":
        return named
    if style == "cause":
        return f"{p.name} {p.cause}."
    return rng.choice((f"{p.name} {p.cause}, so {L.pronoun(p.name)} was {p.mood}.",
                       f"{p.name} was {p.mood} because {L.pronoun(p.name)} {p.cause}."))


def story(rng: random.Random, scene: Scene, mood_style: str = "both") -> str:
    """A short story stating every fact of the scene, one block of sentences per person."""
    out = []
    for p in scene.people:
        block = [place_sentence(rng, p), object_sentence(rng, p), mood_sentence(rng, p, mood_style)]
        if rng.random() < 0.5:
            block[1], block[2] = block[2], block[1]
        out += block
    return " ".join(out)


# ---- story cloze: one consistent ending, three that contradict the story in one slot each

def cloze_context(rng: random.Random, scene: Scene) -> str:
    """The hero (people[0]) goes somewhere with a thing; their mood is named or only caused."""
    p = scene.people[0]
    s = [f"{p.name} went to the {p.place} with {L.possessive(p.name)} {p.colour} {p.obj}.",
         f"There {L.pronoun(p.name)} {p.cause}."]
    if rng.random() < 0.5:
        s.append(f"{p.name} felt {p.mood}.")
    for q in scene.people[1:]:
        s.insert(rng.randint(2, len(s)), f"{q.name} stayed {L.at(q.place)}.")  # after "There ..."
    return " ".join(s)


def cloze_ending(p: Person, template: int, name: str | None = None, place: str | None = None,
                 mood: str | None = None, colour: str | None = None) -> str:
    name, place = name or p.name, place or p.place
    act, colour = L.MOODS[mood or p.mood]["act"], colour or p.colour
    return (f"{name} {act} and held the {colour} {p.obj} {L.at(place)}.",
            f"Still {L.at(place)}, {name} {act} and looked at the {colour} {p.obj}.",
            f"{name} {act} and put the {colour} {p.obj} down {L.at(place)}.")[template]


def cloze_endings(rng: random.Random, scene: Scene, right: int) -> list[str]:
    """Four endings: the right one at index `right`, three wrong in one of person/place/mood/colour."""
    p = scene.people[0]
    names = [q.name for q in scene.people]
    places = [q.place for q in scene.people]
    t = rng.randrange(3)
    wrong = {
        "person": cloze_ending(p, t, name=L.other(rng, L.NAMES, *names)),
        # prefer a place the story mentions, so the place word alone does not give it away
        "place": cloze_ending(p, t, place=places[1] if len(places) > 1 else L.other(rng, L.PLACES, p.place)),
        "mood": cloze_ending(p, t, mood=rng.choice(L.NEGATIVE_MOODS if L.MOODS[p.mood]["pol"] > 0
                                                   else L.POSITIVE_MOODS)),
        "colour": cloze_ending(p, t, colour=L.other(rng, L.COLOURS, p.colour)),
    }
    kinds = rng.sample(sorted(wrong), 3)
    endings = [wrong[k] for k in kinds]
    endings.insert(right, cloze_ending(p, t))
    return endings


# ---- entailment: a premise stating some facts, a hypothesis true, false or undecided by it

def premise(rng: random.Random, scene: Scene) -> tuple[str, set[tuple[str, str]]]:
    """Sentences for every place and a random part of the objects and moods. -> (text, stated)."""
    out, stated = [], set()
    for p in scene.people:
        out.append(place_sentence(rng, p))
        stated.add((p.name, "place"))
        for attr in rng.sample(["obj", "mood"], rng.randint(1, 2)):
            stated.add((p.name, attr))
            out.append(object_sentence(rng, p) if attr == "obj" else mood_sentence(rng, p, "word"))
    return " ".join(out), stated


def _opposite_mood(rng: random.Random, mood: str) -> str:
    return rng.choice(L.NEGATIVE_MOODS if L.MOODS[mood]["pol"] > 0 else L.POSITIVE_MOODS)


def hypothesis(rng: random.Random, scene: Scene, stated: set[tuple[str, str]], label: str) -> str:
    """A hypothesis with the requested label (entailment | contradiction | neutral)."""
    if label == "neutral":
        unstated = sorted((n, a) for n in (q.name for q in scene.people) for a in ("obj", "mood")
                          if (n, a) not in stated)
        if unstated and rng.random() < 0.6:
            name, attr = rng.choice(unstated)
            p = scene.person(name)
            if attr == "obj":
                return rng.choice((f"{name} had {L.a(L.other(rng, L.COLOURS, p.colour) + ' ' + p.obj)}.",
                                   f"{name} had {L.a(p.colour + ' ' + p.obj)}."))
            return rng.choice((f"{name} was {rng.choice(L.MOOD_NAMES)}.",
                               f"{name} was not {rng.choice(L.MOOD_NAMES)}."))
        stranger = L.other(rng, L.NAMES, *(q.name for q in scene.people))
        p = rng.choice(scene.people)
        return rng.choice((f"{stranger} was {L.at(p.place)}.", f"{stranger} was {p.mood}.",
                           f"{stranger} had {L.a(p.colour + ' ' + p.obj)}."))
    name, attr = rng.choice(sorted(stated))
    p, true = scene.person(name), label == "entailment"
    negate = rng.random() < 0.35
    if attr == "place":
        # half the time the wrong place is another person's, so place words alone do not decide
        others = [q.place for q in scene.people if q is not p]
        wrong = rng.choice(others) if others and rng.random() < 0.5 else L.other(rng, L.PLACES, p.place)
        place = (wrong if negate else p.place) if true else (p.place if negate else wrong)
        return f"{name} was {'not ' if negate else ''}{L.at(place)}."
    if attr == "obj":
        wrong = L.other(rng, L.COLOURS, p.colour)
        colour = (wrong if negate else p.colour) if true else (p.colour if negate else wrong)
        return rng.choice((f"{name}'s {p.obj} was {'not ' if negate else ''}{colour}.",
                           f"The {p.obj} that {name} had was {'not ' if negate else ''}{colour}."))
    wrong = _opposite_mood(rng, p.mood)
    if true and not negate:
        return rng.choice((f"{name} was {p.mood}.", f"{name} felt {rng.choice(L.MOODS[p.mood]['syn'])}."))
    mood = (wrong if negate else p.mood) if true else (p.mood if negate else wrong)
    return f"{name} was {'not ' if negate else ''}{mood}."
