"""The built-in world's fixed lexicon: kind names, attribute words, story words and grammar words.

The vocabulary is the same for every world seed (a seed only decides which names become kinds and
what is true of them), so one word-level tokenizer serves every world; it stays well under the
512 embedding rows the presets reserve (`models.presets.WORLD_VOCAB`).
"""

from __future__ import annotations

# Pseudo-words, so that nothing a reader knows about real objects conflicts with the world.
KIND_NAMES = (
    "dax", "wug", "blick", "fep", "toma", "zib", "kiki", "bouba", "lorp", "mip", "tulver",
    "gazzer", "norg", "pilk", "quint", "rell", "sarn", "tove", "vex", "yorb", "zeph", "frell",
    "glim", "hask", "jorn", "lune", "mosk", "nix", "plov", "quell", "ront", "sib", "trel",
    "umber", "vint", "wex", "zork", "brim", "cluf", "drev", "fipple", "gork", "hib", "jub",
    "klee", "morp", "snib", "wozzle",
)


def plural(name: str) -> str:
    return name + ("es" if name.endswith(("x", "s", "z", "sh", "ch")) else "s")


# Colour name → RGB; chosen far apart so that 32×32 renders with noise stay distinguishable.
COLOURS = {
    "red": (220, 40, 40), "orange": (245, 145, 25), "yellow": (235, 225, 45),
    "green": (40, 185, 60), "blue": (45, 85, 235), "purple": (150, 55, 205),
    "pink": (245, 125, 195), "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "bar", "pillar", "ring")
SIZES = ("small", "big")
TEXTURES = ("plain", "striped", "dotted")
CELLS = ("top left", "top right", "bottom left", "bottom right")  # the 2×2 grid, row-major

# Non-visual knowledge: stated in text only.
CATEGORIES = ("animal", "plant", "tool", "food", "toy", "machine")
HABITATS = ("forest", "sea", "desert", "farm", "city", "cave")
USES = ("digging", "cooking", "music", "light", "travel", "play", "cutting", "building")

PEOPLE = ("ann", "tom", "mia", "sam", "lea", "ben", "ivy", "max")
PLACES = ("box", "bag", "basket", "drawer", "cup", "jar")  # containers in location stories
MAX_NUMBER = 20
NUMBERS = tuple(str(n) for n in range(MAX_NUMBER + 1))
COUNT_WORDS = ("zero", "one", "two", "three", "four")

GRAMMAR = (
    ". , ? : a an the is are it its this that there here and or not no yes of in on to for "
    "with from by as at than kind thing things one more less each some every all "
    "lives live found can be eaten eat you people use used uses useful shaped like looks look "
    "colour shape size texture pattern picture image shows see show we has have had gets get "
    "gives give takes take puts put moves move now then later first next after before where what "
    "which how many much who does do heavier lighter than plus minus equals makes question answer "
    "left right top bottom above below next beside compared item object describe tell me "
    "true false also both neither either same different story once day count number "
    "cannot safe food edible find"
).split()


def vocabulary() -> list[str]:
    """Every word the world can produce, in a fixed order (specials are added by the tokenizer)."""
    words: list[str] = []
    groups = [GRAMMAR, KIND_NAMES, [plural(n) for n in KIND_NAMES], COLOURS, SHAPES, SIZES,
              TEXTURES, [w for c in CELLS for w in c.split()], CATEGORIES, HABITATS, USES,
              PEOPLE, PLACES, NUMBERS, COUNT_WORDS]
    for group in groups:
        for w in group:
            if w not in words:
                words.append(w)
    return words
