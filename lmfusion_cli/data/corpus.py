"""The English text corpus of the embedded tiny LM, one document at a time (issue 4).

Two kinds of documents, each generated deterministically from (seed, split, kind, index) by `make_document`:

- `captions`: the shapes captions, with every template of `data/shapes.py` (lower case, no full stop,
  one caption per document — the form the fusion model sees them in);
- `general`: a broader templated English corpus — scene descriptions, facts about colours, animals and
  objects, positions, counting and sums, days and weather, and short stories with names and pronouns —
  so the LM learns real syntax and a few thousand word pieces, not one sentence pattern.

Used at run time for the text-only negatives of interleaved training (`interleaved.text_only_document`)
and at build time for the tiny LM's pretraining set (`scripts/lm_corpus.py` builds the training documents
and the held-out split disjoint from them, `scripts/build_assets.py` trains on it). This module owns the
templates; the word lists are `corpus_words.py`, the shapes vocabulary `data/shapes.py`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lmfusion_cli.data import shapes
from lmfusion_cli.data.corpus_words import (
    ACTIVITIES,
    ADJECTIVES,
    ANIMALS,
    COLOUR_WORDS,
    COLOURED_THINGS,
    DAYS,
    FEELINGS,
    FOODS,
    FURNITURE,
    MASS_COLOURS,
    NAMES_HE,
    NAMES_SHE,
    NUMBER_WORDS,
    OBJECTS,
    OUTDOOR,
    PAST_VERBS,
    PLACES,
    PREPOSITIONS,
    PROFESSIONS,
    SEASONS,
    WEATHER,
)

KINDS = ("captions", "general")
_SPLIT_CODE = {"train": 0, "heldout": 1}


@dataclass(frozen=True)
class Document:
    kind: str
    """`captions` or `general`."""
    sentences: tuple[str, ...]
    """The sentences, in order; the unit of the held-out overlap check."""

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _a(word: str) -> str:
    """`word` with its indefinite article."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def _cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def caption_document(rng: np.random.Generator) -> list[str]:
    """One shapes caption, drawn with the shapes set's own attribute sampler and any of its templates."""
    attributes = shapes.sample_attributes(rng)
    return [shapes.caption_for(attributes, int(rng.integers(1 << 16)))]


def _scene(rng: np.random.Generator) -> list[str]:
    obj, other = rng.choice(len(OBJECTS), size=2, replace=False)
    obj, other = OBJECTS[obj], OBJECTS[other]
    c1, c2 = _pick(rng, COLOUR_WORDS), _pick(rng, COLOUR_WORDS)
    where = _pick(rng, FURNITURE)
    prep = _pick(rng, PREPOSITIONS)
    out = [
        f"There is {_a(_pick(rng, ADJECTIVES))} {c1} {obj} {prep} the {where}.",
        _cap(f"{_pick(rng, PREPOSITIONS)} the {obj} is {_a(c2)} {other}."),
    ]
    if rng.random() < 0.5:
        out.append(f"The {other} is {_pick(rng, ADJECTIVES)} and the {obj} is {_pick(rng, ADJECTIVES)}.")
    if rng.random() < 0.5:
        out.append(f"Where is the {obj}? The {obj} is {prep} the {where}.")
    return out


def _colour_facts(rng: np.random.Generator) -> list[str]:
    out = []
    for _ in range(int(rng.integers(2, 5))):
        r = rng.random()
        if r < 0.35:
            one, many, colour = _pick(rng, COLOURED_THINGS)
            out.append(
                _pick(
                    rng,
                    (
                        f"{_cap(many)} are {colour}.",
                        f"{_cap(_a(one))} is {colour}.",
                        f"What colour is {_a(one)}? {_cap(_a(one))} is {colour}.",
                        f"Most {many} are {colour}.",
                    ),
                )
            )
        elif r < 0.6:
            thing, colour = _pick(rng, MASS_COLOURS)
            out.append(_pick(rng, (f"{_cap(thing)} is {colour}.", f"What colour is {thing}? It is {colour}.")))
        elif r < 0.8:
            a, b = rng.choice(len(COLOURED_THINGS), size=2, replace=False)
            (one_a, _, col_a), (one_b, _, col_b) = COLOURED_THINGS[a], COLOURED_THINGS[b]
            joiner = "and" if col_a == col_b else "but"
            out.append(f"{_cap(_a(one_a))} is {col_a}, {joiner} {_a(one_b)} is {col_b}.")
        else:
            c1, c2 = rng.choice(len(shapes.COLOURS), size=2, replace=False)
            names = list(shapes.COLOURS)
            out.append(f"{_cap(names[c1])} and {names[c2]} are two colours.")
    return out


def _animal_facts(rng: np.random.Generator) -> list[str]:
    out = []
    for _ in range(int(rng.integers(2, 5))):
        one, many, sound, legs, home = _pick(rng, ANIMALS)
        out.append(
            _pick(
                rng,
                (
                    f"{_cap(_a(one))} {sound}.",
                    f"{_cap(_a(one))} has {NUMBER_WORDS[legs]} legs.",
                    f"{_cap(many)} live in {home}.",
                    f"How many legs does {_a(one)} have? It has {NUMBER_WORDS[legs]}.",
                    f"The {one} is {_pick(rng, FEELINGS)} today.",
                    f"{_pick(rng, NAMES_HE + NAMES_SHE)} saw {_a(_pick(rng, ADJECTIVES))} {one} near {_pick(rng, PLACES)}.",
                ),
            )
        )
    return out


def _counting(rng: np.random.Generator) -> list[str]:
    r = rng.random()
    if r < 0.25:
        start = int(rng.integers(0, 15))
        length = int(rng.integers(3, 7))
        return [_cap(", ".join(NUMBER_WORDS[start : start + length])) + "."]
    if r < 0.55:
        a, b = int(rng.integers(0, 11)), int(rng.integers(0, 11))
        if rng.random() < 0.5:
            return [f"{_cap(NUMBER_WORDS[a])} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}."]
        hi, lo = max(a, b), min(a, b)
        return [f"{_cap(NUMBER_WORDS[hi])} minus {NUMBER_WORDS[lo]} is {NUMBER_WORDS[hi - lo]}."]
    if r < 0.75:
        n = int(rng.integers(1, 20))
        return [
            f"After {NUMBER_WORDS[n]} comes {NUMBER_WORDS[n + 1]}.",
            f"Before {NUMBER_WORDS[n]} comes {NUMBER_WORDS[n - 1]}.",
        ][: int(rng.integers(1, 3))]
    a, b = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    one, many, _ = _pick(rng, COLOURED_THINGS)
    name = _pick(rng, NAMES_HE + NAMES_SHE)
    return [
        f"{name} has {NUMBER_WORDS[a]} {one if a == 1 else many}.",
        f"Then {name} gets {NUMBER_WORDS[b]} more {one if b == 1 else many}.",
        f"Now {name} has {NUMBER_WORDS[a + b]} {many}.",
    ]


def _positions(rng: np.random.Generator) -> list[str]:
    out = []
    for _ in range(int(rng.integers(1, 4))):
        thing = _pick(rng, OBJECTS + tuple(a[0] for a in ANIMALS))
        prep = _pick(rng, PREPOSITIONS)
        ref = _pick(rng, OUTDOOR + FURNITURE)
        out.append(
            _pick(
                rng,
                (
                    f"The {thing} is {prep} the {ref}.",
                    f"Where is the {thing}? It is {prep} the {ref}.",
                    f"{_cap(_a(_pick(rng, COLOUR_WORDS)))} {thing} sits {prep} the {ref}.",
                ),
            )
        )
    return out


def _daily(rng: np.random.Generator) -> list[str]:
    he = rng.random() < 0.5
    name = _pick(rng, NAMES_HE if he else NAMES_SHE)
    pron, poss = ("He", "his") if he else ("She", "her")
    season, season_fact = _pick(rng, SEASONS)
    options = (
        f"On {_pick(rng, DAYS)}, {name} went to {_pick(rng, PLACES)}.",
        f"It was {_pick(rng, WEATHER)} on {_pick(rng, DAYS)}.",
        f"{name} likes to {_pick(rng, ACTIVITIES)}.",
        f"{pron} ate {_pick(rng, FOODS)} for lunch.",
        f"In {season}, {season_fact}.",
        f"{name} and {poss} friend {_pick(rng, NAMES_HE + NAMES_SHE)} like to {_pick(rng, ACTIVITIES)}.",
        f"{pron} felt {_pick(rng, FEELINGS)} after school.",
        f"{name} put {poss} {_pick(rng, COLOUR_WORDS)} {_pick(rng, OBJECTS)} {_pick(rng, PREPOSITIONS)} the "
        f"{_pick(rng, FURNITURE)}.",
    )
    idx = rng.choice(len(options), size=int(rng.integers(2, 5)), replace=False)
    return [options[i] for i in sorted(idx)]


def _story(rng: np.random.Generator) -> list[str]:
    he = rng.random() < 0.5
    name = _pick(rng, NAMES_HE if he else NAMES_SHE)
    pron, obj_pron, poss = ("he", "him", "his") if he else ("she", "her", "her")
    friend = _pick(rng, NAMES_SHE if he else NAMES_HE)
    animal = _pick(rng, ANIMALS)[0]
    thing = _pick(rng, OBJECTS)
    colour = _pick(rng, COLOUR_WORDS)
    place = _pick(rng, PLACES)
    opening = _pick(
        rng,
        (
            f"Once upon a time, there was a little {animal} named {name}.",
            f"Once upon a time, {name} lived near {place}.",
            f"One {_pick(rng, WEATHER)} morning, {name} woke up early.",
        ),
    )
    middle = [
        f"{_cap(pron)} lived with {poss} {_pick(rng, ('mother', 'father', 'grandmother', 'brother', 'sister'))}.",
        f"One day, {name} {_pick(rng, PAST_VERBS)} {_a(colour)} {thing} at {place}.",
        f"{_cap(pron)} showed the {thing} to {friend}.",
        f'{friend} said, "What a {_pick(rng, ("nice", "lovely", "strange", "funny"))} {thing}!"',
        f"They took the {thing} to {_pick(rng, PLACES)} and played all day.",
        f"The {thing} was {_pick(rng, ADJECTIVES)}, so {name} kept it {_pick(rng, PREPOSITIONS)} the "
        f"{_pick(rng, FURNITURE)}.",
        f"Then it started to rain, and {name} ran home.",
        f"{friend} gave {obj_pron} {_pick(rng, FOODS)}.",
    ]
    idx = sorted(rng.choice(len(middle), size=int(rng.integers(3, 6)), replace=False))
    ending = _pick(
        rng,
        (
            f"{name} was very {_pick(rng, FEELINGS)}.",
            "The end.",
            f"That night, {name} slept well.",
            f"{name} and {friend} became good friends.",
        ),
    )
    return [opening] + [middle[i] for i in idx] + [ending]


def _professions(rng: np.random.Generator) -> list[str]:
    out = []
    for _ in range(int(rng.integers(1, 4))):
        job, does = _pick(rng, PROFESSIONS)
        he = rng.random() < 0.5
        name = _pick(rng, NAMES_HE if he else NAMES_SHE)
        pron = "he" if he else "she"
        out.append(
            _pick(
                rng,
                (
                    f"{_cap(_a(job))} {does}.",
                    f"What does {_a(job)} do? {_cap(_a(job))} {does}.",
                    f"{name} wants to be {_a(job)} when {pron} grows up.",
                    f"{name} is {_a(job)}, and every day {pron} {does}.",
                    f"The {job} went to {_pick(rng, PLACES)} on {_pick(rng, DAYS)}.",
                ),
            )
        )
    return out


GENERAL_GENERATORS: tuple[tuple[Callable[[np.random.Generator], list[str]], float], ...] = (
    (_scene, 0.15),
    (_colour_facts, 0.15),
    (_animal_facts, 0.12),
    (_counting, 0.14),
    (_positions, 0.1),
    (_daily, 0.14),
    (_story, 0.2),
    (_professions, 0.08),
)


def general_document(rng: np.random.Generator) -> list[str]:
    """One document of the broader corpus: a generator picked by its weight, then its sentences."""
    weights = np.array([w for _, w in GENERAL_GENERATORS])
    generator = GENERAL_GENERATORS[int(rng.choice(len(weights), p=weights / weights.sum()))][0]
    return generator(rng)


def make_document(kind: str, split: str, index: int, seed: int = 0) -> Document:
    """Document `index` of `kind` in `split`; depends only on (seed, split, kind, index)."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], KINDS.index(kind), index])
    sentences = caption_document(rng) if kind == "captions" else general_document(rng)
    return Document(kind=kind, sentences=tuple(sentences))
