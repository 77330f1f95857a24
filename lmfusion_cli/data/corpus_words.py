"""The word lists of the general text corpus (`corpus.py` draws its documents from them).

Names, numbers, coloured things, animals, objects, places, feelings, activities, foods, professions,
prepositions, days, seasons and weather: enough for a few thousand word pieces, so the tiny LM learns real
syntax. The shapes vocabulary (colours, shapes, sizes) is `data/shapes.py`'s and only reused here."""

from __future__ import annotations

from lmfusion_cli.data import shapes

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
