"""The English text corpus the embedded tiny LM is pretrained on (issue 4).

Two kinds of documents, all generated here, deterministically from (seed, split, index):

- `captions`: the shapes captions, with every template of `data/shapes.py` (lower case, no full stop,
  one caption per document — the form the fusion model sees them in);
- `general`: a broader templated English corpus — scene descriptions, facts about colours, animals and
  objects, positions, counting and sums, days and weather, and short stories with names and pronouns —
  so the LM learns real syntax and a few thousand word pieces, not one sentence pattern.

A document is a list of sentences; `Document.text` joins them with spaces. The held-out split is drawn
from its own random stream and then *filtered*: every held-out sentence that also occurs in the training
documents is removed (and counted), so perplexity is measured on sentences the LM has never seen.

This module owns the word lists and templates of the general corpus; the shapes vocabulary is read
from `data/shapes.py`. It does not tokenize or train anything (see `scripts/build_assets.py`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from lmfusion_cli.data import shapes

KINDS = ("captions", "general")
_SPLIT_CODE = {"train": 0, "heldout": 1}

NAMES_HE = tuple(
    """Tom Sam Ben Max Leo Jack Noah Finn Omar Hugo Theo Paul Luke Dan Oscar Felix Ravi Kenji
    Marco Peter Adam Arthur Bruno Carlos David Elias Ethan George Harry Henry Isaac James Jonas Karl Liam Lucas
    Mateo Miguel Nico Oliver Pablo Rafael Simon Stefan Thomas Victor William Yusuf Aaron Boris Caleb Dmitri
    Edgar Frank Gabriel Ibrahim Joel Kevin Louis Martin Nathan Owen Patrick Quentin Roger Sean Tariq Walter""".split()
)
NAMES_SHE = tuple(
    """Anna Mia Lily Emma Zoe Ella Ruby Nora Maya Lena Iris Rosa Kate Ava Eva Sara Grace Alice
    Hana Julia Amelia Bella Chloe Daisy Elena Fatima Greta Hannah Isabel Jasmine Klara Laura Lucy Maria Nina
    Olivia Penny Priya Rachel Sofia Tara Ursula Vera Wendy Yara Agnes Beatrice Clara Diana Esther Freya Helen
    Ingrid Joy Leila Martha Naomi Paula Rita Sophie Tess Violet Zara Amira Camila""".split()
)
NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
)
# Things with a true colour: (singular, plural, colour).
COLOURED_THINGS = (
    ("banana", "bananas", "yellow"),
    ("lemon", "lemons", "yellow"),
    ("strawberry", "strawberries", "red"),
    ("cherry", "cherries", "red"),
    ("tomato", "tomatoes", "red"),
    ("carrot", "carrots", "orange"),
    ("pumpkin", "pumpkins", "orange"),
    ("grape", "grapes", "purple"),
    ("plum", "plums", "purple"),
    ("lime", "limes", "green"),
    ("pea", "peas", "green"),
    ("leaf", "leaves", "green"),
    ("frog", "frogs", "green"),
    ("cloud", "clouds", "white"),
    ("swan", "swans", "white"),
    ("crow", "crows", "black"),
    ("fire truck", "fire trucks", "red"),
    ("school bus", "school buses", "yellow"),
    ("chick", "chicks", "yellow"),
    ("flamingo", "flamingos", "pink"),
    ("elephant", "elephants", "grey"),
    ("bear", "bears", "brown"),
    ("coconut", "coconuts", "brown"),
    ("raven", "ravens", "black"),
)
MASS_COLOURS = (
    ("the sky", "blue"),
    ("grass", "green"),
    ("snow", "white"),
    ("milk", "white"),
    ("coal", "black"),
    ("the sea", "blue"),
    ("chocolate", "brown"),
    ("the sun", "yellow"),
    ("soot", "black"),
    ("butter", "yellow"),
    ("sand", "yellow"),
    ("the night", "dark"),
)
# (singular, plural, sound, legs, home)
ANIMALS = (
    ("cat", "cats", "meows", 4, "a house"),
    ("dog", "dogs", "barks", 4, "a kennel"),
    ("cow", "cows", "moos", 4, "a barn"),
    ("duck", "ducks", "quacks", 2, "a pond"),
    ("sheep", "sheep", "bleats", 4, "a field"),
    ("horse", "horses", "neighs", 4, "a stable"),
    ("pig", "pigs", "oinks", 4, "a sty"),
    ("owl", "owls", "hoots", 2, "a tree"),
    ("bee", "bees", "buzzes", 6, "a hive"),
    ("lion", "lions", "roars", 4, "the grassland"),
    ("mouse", "mice", "squeaks", 4, "a hole"),
    ("hen", "hens", "clucks", 2, "a coop"),
    ("spider", "spiders", "makes no sound", 8, "a web"),
    ("goat", "goats", "bleats", 4, "a farm"),
    ("wolf", "wolves", "howls", 4, "the woods"),
    ("snake", "snakes", "hisses", 0, "the grass"),
)
OBJECTS = tuple(
    """ball box cup book hat kite bag bowl vase lamp clock shoe sock pencil mug plate bottle
    basket blanket bucket candle drum key ribbon scarf spoon teapot umbrella pillow jar button coin comb crayon
    feather flag fork glove hammer helmet jacket kettle ladder letter map mirror necklace notebook paintbrush
    parcel pebble piano puzzle radio ring rope ruler saucer shell shovel sponge stamp sticker suitcase sweater
    towel trumpet violin wagon wallet watch whistle boot belt brush camera card chain coat crown cushion dice
    envelope fan flute guitar lantern magnet marble medal needle pan pot purse robot rocket skateboard sled
    statue teddy ticket toothbrush tray trophy tent torch""".split()
)
FURNITURE = (
    "table",
    "bed",
    "sofa",
    "desk",
    "shelf",
    "chair",
    "window",
    "door",
    "rug",
    "stool",
    "cupboard",
    "bench",
    "bookcase",
    "counter",
    "drawer",
    "fireplace",
    "piano",
    "sink",
    "wardrobe",
    "bathtub",
)
OUTDOOR = (
    "tree",
    "house",
    "hill",
    "bridge",
    "fence",
    "river",
    "rock",
    "tower",
    "barn",
    "well",
    "mountain",
    "lake",
    "road",
    "garden wall",
    "castle",
    "lighthouse",
    "windmill",
    "pond",
    "gate",
    "church",
)
PLACES = tuple(
    "the " + p
    for p in """park garden market beach forest library school farm river zoo bakery
    museum lake city village station hills kitchen shop harbour airport castle cinema desert factory field
    hospital island jungle meadow mountains office orchard palace playground pool stadium street supermarket
    theatre valley workshop attic basement cafe camp circus countryside""".split()
)
ADJECTIVES = tuple(
    """big small old new soft round heavy light shiny tiny long short warm cold clean dirty
    pretty plain broken striped bright dark dusty empty fancy fluffy fresh gentle giant golden hard huge
    little loud narrow neat noisy odd quiet rough sharp silly smooth sticky strange strong sweet tall thick
    thin ugly wet wide wild wooden woolly young enormous lovely wonderful simple useful curly spotted""".split()
)
FEELINGS = tuple(
    """happy sad tired hungry sleepy proud scared excited calm angry surprised bored cheerful
    curious thirsty worried lonely brave grumpy glad nervous shy upset joyful puzzled relaxed""".split()
)
ACTIVITIES = (
    "read books",
    "draw pictures",
    "play football",
    "sing songs",
    "ride a bike",
    "bake bread",
    "swim in the lake",
    "climb trees",
    "fly a kite",
    "build towers",
    "paint flowers",
    "play the drum",
    "plant seeds",
    "watch the stars",
    "write letters",
    "play chess",
    "go fishing",
    "collect shells",
    "dance",
    "skip rope",
    "play hide and seek",
    "feed the ducks",
    "pick berries",
    "build sandcastles",
    "tell jokes",
    "play the violin",
    "cook dinner",
    "visit grandmother",
    "go camping",
    "solve puzzles",
    "make paper boats",
    "count the clouds",
)
FOODS = tuple(
    """soup bread rice cake apples pancakes cheese eggs noodles porridge pie salad fish honey
    cookies jam sandwiches potatoes beans carrots muffins yogurt oranges pears grapes cherries pasta pizza
    dumplings waffles toast biscuits sausages peaches melon nuts""".split()
)
PAST_VERBS = tuple(
    """found lost painted bought carried dropped washed made drew hid cleaned fixed sold wrapped
    opened mended borrowed built chose counted decorated discovered held kicked lifted measured moved
    noticed pushed pulled shared sorted threw touched tied won""".split()
)
PROFESSIONS = (
    ("baker", "bakes bread"),
    ("farmer", "grows food"),
    ("doctor", "helps sick people"),
    ("teacher", "teaches children"),
    ("pilot", "flies planes"),
    ("painter", "paints pictures"),
    ("fisher", "catches fish"),
    ("builder", "builds houses"),
    ("cook", "makes meals"),
    ("postman", "brings letters"),
    ("dentist", "looks after teeth"),
    ("gardener", "grows flowers"),
    ("driver", "drives a bus"),
    ("tailor", "sews clothes"),
    ("librarian", "looks after books"),
    ("singer", "sings songs"),
    ("sailor", "sails ships"),
    ("nurse", "cares for patients"),
    ("firefighter", "puts out fires"),
    ("carpenter", "makes things from wood"),
)
PREPOSITIONS = (
    "on",
    "under",
    "next to",
    "behind",
    "in front of",
    "near",
    "beside",
    "inside",
    "to the left of",
    "to the right of",
    "above",
    "below",
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SEASONS = (
    ("spring", "the flowers open"),
    ("summer", "the days are long"),
    ("autumn", "the leaves fall"),
    ("winter", "the nights are long"),
)
WEATHER = ("sunny", "rainy", "windy", "cloudy", "cold", "warm", "foggy", "snowy", "stormy", "bright")
COLOUR_WORDS = tuple(shapes.COLOURS) + ("brown", "pink", "grey")


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


def make_documents(kind: str, split: str, count: int, seed: int = 0) -> list[Document]:
    return [make_document(kind, split, i, seed) for i in range(count)]


@dataclass(frozen=True)
class Corpus:
    train: list[Document]
    """Training documents, captions and general interleaved."""
    heldout: dict[str, list[Document]]
    """Held-out documents per kind, with every sentence seen in `train` removed."""
    removed_overlap: dict[str, int]
    """Held-out sentences dropped per kind because they occur in the training documents."""


def build_corpus(num_captions: int, num_general: int, num_heldout: int, seed: int = 0) -> Corpus:
    """Training documents plus per-kind held-out documents disjoint from them at the sentence level."""
    captions = make_documents("captions", "train", num_captions, seed)
    general = make_documents("general", "train", num_general, seed)
    train = interleave(captions, general)
    seen = training_sentences(train)
    heldout: dict[str, list[Document]] = {}
    removed: dict[str, int] = {}
    for kind in KINDS:
        kept_docs, dropped, index = [], 0, 0
        while len(kept_docs) < num_heldout and index < 50 * max(num_heldout, 1):
            doc = make_document(kind, "heldout", index, seed)
            index += 1
            fresh = tuple(s for s in doc.sentences if s not in seen)
            dropped += len(doc.sentences) - len(fresh)
            if fresh:
                kept_docs.append(Document(kind=kind, sentences=fresh))
        heldout[kind], removed[kind] = kept_docs, dropped
    return Corpus(train=train, heldout=heldout, removed_overlap=removed)


def training_sentences(docs: Iterable[Document]) -> set[str]:
    return {s for d in docs for s in d.sentences}


def interleave(a: list[Document], b: list[Document]) -> list[Document]:
    """Merge two lists evenly (deterministic), so any prefix of the result mixes both kinds."""
    total = len(a) + len(b)
    out, ia, ib = [], 0, 0
    for k in range(total):
        if ib >= len(b) or (ia < len(a) and ia * total <= k * len(a)):
            out.append(a[ia])
            ia += 1
        else:
            out.append(b[ib])
            ib += 1
    return out
