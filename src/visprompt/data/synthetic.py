"""A seeded procedural world of shapes, and true captions for its pictures.

Every picture shows one shape (14 kinds) in one of 8 colours, of 3 sizes, at a
position and rotation, on one of 8 background patterns in another colour, with
optional clutter (small scribbles behind the shape) and occlusion (a bar over
part of it). :func:`sample_scene` draws the attributes, :func:`render` paints
them (Pillow, 2x supersampled, then box-filtered down, so edges are
anti-aliased), and :func:`caption` writes one of several sentence templates
that mention some or all of the attributes, always truthfully.

The world is small on purpose: the shipped demo backbone (``demo-tiny``) is a
CLIP pretrained on these pictures and captions, and the ``synthetic-shapes``
dataset is a downstream task in the same world under a shift (see
:data:`PRETRAIN_WORLD` and :data:`DOWNSTREAM_WORLD`).

Everything is a pure function of its seed: scene ``i`` of seed ``s`` is drawn
from ``numpy.random.default_rng([s, i])``, so it does not depend on batch sizes
or on which other scenes were generated.

Example::

    >>> from visprompt.data.synthetic import PRETRAIN_WORLD, generate
    >>> images, captions, scenes = generate(4, seed=0, world=PRETRAIN_WORLD)
    >>> images.shape  # (n, size, size, 3) uint8
    (4, 32, 32, 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

#: The shape kinds. Similar pairs exist on purpose (circle/ellipse/ring,
#: square/rectangle/diamond, pentagon/hexagon, star/cross, heart/crescent).
SHAPES: tuple[str, ...] = (
    "circle",
    "ellipse",
    "square",
    "rectangle",
    "triangle",
    "diamond",
    "pentagon",
    "hexagon",
    "star",
    "cross",
    "heart",
    "crescent",
    "ring",
    "arrow",
)

#: Colour name -> RGB. Shapes and backgrounds both draw from this palette.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (240, 135, 20),
    "yellow": (235, 215, 35),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "purple": (135, 50, 185),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}

#: Background patterns (adjectives as captions use them).
BACKGROUNDS: tuple[str, ...] = (
    "plain",
    "striped",
    "checkered",
    "dotted",
    "shaded",
    "grid",
    "speckled",
    "wavy",
)

#: Sizes and the shape's outer radius as a fraction of the image side.
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.17, 0.23),
    "medium": (0.25, 0.31),
    "large": (0.33, 0.40),
}

#: Position names on a 3 x 3 grid, indexed [row][column].
POSITIONS: tuple[tuple[str, ...], ...] = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)

#: Shapes whose rotation is invisible (captions never call them tilted).
ROTATION_FREE: frozenset[str] = frozenset({"circle", "ring"})

#: Each shape's habitual colour: in the pretraining world a shape often has it
#: (as hearts are often red in web photos); the downstream task breaks the habit.
TYPICAL_COLOURS: dict[str, str] = {
    "circle": "orange",
    "ellipse": "green",
    "square": "blue",
    "rectangle": "black",
    "triangle": "green",
    "diamond": "blue",
    "pentagon": "purple",
    "hexagon": "orange",
    "star": "yellow",
    "cross": "red",
    "heart": "red",
    "crescent": "yellow",
    "ring": "white",
    "arrow": "black",
}


@dataclass(frozen=True)
class World:
    """A distribution over scenes.

    Attributes:
        shapes: shape kinds to draw from (uniformly).
        colours: shape colours (uniformly).
        backgrounds: background patterns and their probabilities.
        sizes: size names to draw from (uniformly).
        max_angle: rotations are uniform in [-max_angle, max_angle] degrees.
        clutter_prob: probability that a scene has clutter.
        occlusion_prob: probability that a bar covers part of the shape.
        pattern_contrast: how far a background pattern's second colour is from
            its base colour (0 = invisible pattern, 1 = white or black).
        typical_colour_prob: probability that a shape takes its
            :data:`TYPICAL_COLOURS` colour instead of one drawn from ``colours``.
        pixel_block: the camera's coarseness (1: full resolution): a picture is
            taken at ``size // pixel_block`` pixels and enlarged to ``size`` in
            blocks of ``pixel_block`` x ``pixel_block`` equal pixels; see
            :func:`picture`.
    """

    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    backgrounds: tuple[tuple[str, float], ...] = tuple((b, 1.0 / 8) for b in BACKGROUNDS)
    sizes: tuple[str, ...] = tuple(SIZES)
    max_angle: float = 30.0
    clutter_prob: float = 0.0
    occlusion_prob: float = 0.0
    pattern_contrast: float = 0.4
    typical_colour_prob: float = 0.0
    pixel_block: int = 1


#: What ``demo-tiny`` was pretrained on: five of the eight backgrounds, mostly
#: plain or shaded, patterns in low contrast, little clutter and occlusion, and
#: shapes in their habitual colour half of the time.
PRETRAIN_WORLD = World(
    backgrounds=(
        ("plain", 0.3),
        ("shaded", 0.25),
        ("striped", 0.15),
        ("checkered", 0.15),
        ("dotted", 0.15),
    ),
    clutter_prob=0.1,
    occlusion_prob=0.1,
    pattern_contrast=0.2,
    typical_colour_prob=0.5,
)

#: The ``synthetic-shapes`` task, under a shift from pretraining: a coarser
#: camera (pictures taken at 16 x 16 pixels and shown at 32 px in 2 x 2 blocks,
#: as a low-resolution sensor's images look enlarged), colours no longer follow
#: the shapes' habits, three of its four backgrounds were never seen in
#: pretraining and have more contrast, clutter and occlusion are more frequent.
DOWNSTREAM_WORLD = World(
    backgrounds=(("grid", 0.3), ("speckled", 0.3), ("wavy", 0.3), ("striped", 0.1)),
    clutter_prob=0.4,
    occlusion_prob=0.2,
    pattern_contrast=0.3,
    pixel_block=2,
)


@dataclass(frozen=True)
class Scene:
    """The attributes of one picture (everything :func:`render` needs).

    ``x``/``y`` are the shape's centre as fractions of the image side,
    ``radius`` its outer radius as a fraction of the side, ``angle`` its
    rotation in degrees (counterclockwise), ``clutter`` the number of scribbles
    (0 = none), ``detail_seed`` the seed of the pattern phase, clutter and
    occlusion geometry, ``contrast`` the background pattern's contrast.
    """

    shape: str
    colour: str
    size: str
    radius: float
    x: float
    y: float
    angle: float
    background: str
    bg_colour: str
    clutter: int
    occluded: bool
    detail_seed: int
    contrast: float = 0.4

    @property
    def position(self) -> str:
        """Where the centre lies on a 3 x 3 grid (``top left`` ... ``center`` ...)."""
        row = min(int(self.y * 3), 2)
        col = min(int(self.x * 3), 2)
        return POSITIONS[row][col]


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that draws scene ``index`` of ``seed`` (independent of batching)."""
    return np.random.default_rng([int(seed), int(index)])


def sample_scene(rng: np.random.Generator, world: World = PRETRAIN_WORLD) -> Scene:
    """Draw one scene's attributes from ``world`` with ``rng``."""
    shape = world.shapes[rng.integers(len(world.shapes))]
    colour = world.colours[rng.integers(len(world.colours))]
    if world.typical_colour_prob > 0 and rng.random() < world.typical_colour_prob:
        colour = TYPICAL_COLOURS[shape]
    bg_colour = colour
    while bg_colour == colour:  # the shape must differ in colour from its background
        bg_colour = tuple(COLOURS)[rng.integers(len(COLOURS))]
    names = [b for b, _ in world.backgrounds]
    probs = np.array([p for _, p in world.backgrounds], dtype=float)
    background = names[rng.choice(len(names), p=probs / probs.sum())]
    size = world.sizes[rng.integers(len(world.sizes))]
    low, high = SIZES[size]
    radius = float(rng.uniform(low, high))
    # Keep most of the shape inside the picture: the centre stays a little more
    # than 0.8 radius away from every border.
    margin = 0.8 * radius + 0.02
    x = float(rng.uniform(margin, 1.0 - margin))
    y = float(rng.uniform(margin, 1.0 - margin))
    angle = float(rng.uniform(-world.max_angle, world.max_angle))
    clutter = int(rng.integers(3, 8)) if rng.random() < world.clutter_prob else 0
    occluded = bool(rng.random() < world.occlusion_prob)
    return Scene(
        shape=shape,
        colour=colour,
        size=size,
        radius=radius,
        x=x,
        y=y,
        angle=angle,
        background=background,
        bg_colour=bg_colour,
        clutter=clutter,
        occluded=occluded,
        detail_seed=int(rng.integers(2**31)),
        contrast=world.pattern_contrast,
    )


# ---------------------------------------------------------------- geometry
def _ngon(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [
        (
            radius * math.cos(phase + 2 * math.pi * k / n),
            radius * math.sin(phase + 2 * math.pi * k / n),
        )
        for k in range(n)
    ]


def _ellipse(rx: float, ry: float, cx: float = 0.0, cy: float = 0.0, n: int = 40):
    return [
        (cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n))
        for k in range(n)
    ]


def _heart(n: int = 48) -> list[tuple[float, float]]:
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        px = 16 * math.sin(t) ** 3
        py = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((px / 17.0, -py / 17.0 + 0.1))  # image y grows downwards
    return pts


def _star() -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        r = 1.0 if k % 2 == 0 else 0.42
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


# Each shape is a list of (polygon in unit coordinates, fill) painted in order
# into a mask; fill 0 cuts holes (ring, crescent).
_UNIT_SHAPES: dict[str, list[tuple[list[tuple[float, float]], int]]] = {
    "circle": [(_ellipse(0.9, 0.9), 255)],
    "ellipse": [(_ellipse(1.0, 0.55), 255)],
    "square": [([(-0.72, -0.72), (0.72, -0.72), (0.72, 0.72), (-0.72, 0.72)], 255)],
    "rectangle": [([(-1.0, -0.5), (1.0, -0.5), (1.0, 0.5), (-1.0, 0.5)], 255)],
    "triangle": [(_ngon(3, 1.0), 255)],
    "diamond": [([(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)], 255)],
    "pentagon": [(_ngon(5, 0.95), 255)],
    "hexagon": [(_ngon(6, 0.95, phase=0.0), 255)],
    "star": [(_star(), 255)],
    "cross": [
        (
            [
                (-0.3, -1.0),
                (0.3, -1.0),
                (0.3, -0.3),
                (1.0, -0.3),
                (1.0, 0.3),
                (0.3, 0.3),
                (0.3, 1.0),
                (-0.3, 1.0),
                (-0.3, 0.3),
                (-1.0, 0.3),
                (-1.0, -0.3),
                (-0.3, -0.3),
            ],
            255,
        )
    ],
    "heart": [(_heart(), 255)],
    "crescent": [(_ellipse(0.9, 0.9), 255), (_ellipse(0.75, 0.75, cx=0.45, cy=-0.15), 0)],
    "ring": [(_ellipse(0.9, 0.9), 255), (_ellipse(0.5, 0.5), 0)],
    "arrow": [
        (
            [
                (-1.0, -0.22),
                (0.2, -0.22),
                (0.2, -0.6),
                (1.0, 0.0),
                (0.2, 0.6),
                (0.2, 0.22),
                (-1.0, 0.22),
            ],
            255,
        )
    ],
}


def _place(points, scene: Scene, side: int) -> list[tuple[float, float]]:
    angle = math.radians(-scene.angle)  # counterclockwise on screen (y grows downwards)
    ca, sa = math.cos(angle), math.sin(angle)
    r = scene.radius * side
    cx, cy = scene.x * side, scene.y * side
    return [(cx + r * (ca * px - sa * py), cy + r * (sa * px + ca * py)) for px, py in points]


# -------------------------------------------------------------- background
def _tint(rgb: np.ndarray, contrast: float) -> np.ndarray:
    """A lighter version of dark colours and a darker version of light ones."""
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    target = 255.0 if lum < 128 else 0.0
    return rgb + contrast * (target - rgb)


@lru_cache(maxsize=8)
def _unit_grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (y, x) as fractions of the side (read-only, shared)."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _background(scene: Scene, side: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array(COLOURS[scene.bg_colour], dtype=np.float32)
    other = _tint(base, scene.contrast)
    yy, xx = _unit_grid(side)
    kind = scene.background
    period = float(rng.uniform(0.12, 0.22))
    phase = float(rng.uniform(0.0, 1.0))
    if kind == "plain":
        return np.broadcast_to(base, (side, side, 3))
    if kind == "striped":
        direction = rng.integers(3)
        coord = (yy, xx, (xx + yy) / math.sqrt(2))[direction]
        weight = (((coord / period + phase) % 1.0) < 0.5).astype(np.float32)
    elif kind == "checkered":
        cells = np.floor(xx / period + phase) + np.floor(yy / period + phase)
        weight = (cells % 2).astype(np.float32)
    elif kind == "dotted":
        fx = (xx / period + phase) % 1.0 - 0.5
        fy = (yy / period + phase) % 1.0 - 0.5
        weight = ((fx**2 + fy**2) < 0.2**2 * 2).astype(np.float32)
    elif kind == "shaded":
        a = float(rng.uniform(0, 2 * math.pi))
        weight = (xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a) + 0.5
        weight = np.clip(weight, 0.0, 1.0)
    elif kind == "grid":
        fx = (xx / period + phase) % 1.0
        fy = (yy / period + phase) % 1.0
        weight = ((fx < 0.18) | (fy < 0.18)).astype(np.float32)
    elif kind == "speckled":
        cells = max(side // 4, 2)
        noise = rng.random((cells, cells)).astype(np.float32)
        weight = np.kron(noise, np.ones((side // cells + 1, side // cells + 1)))[:side, :side]
        weight = (weight > 0.5).astype(np.float32) * 0.8
    elif kind == "wavy":
        amp = float(rng.uniform(0.04, 0.08))
        wave = np.sin(2 * math.pi * (xx / (2 * period) + phase)) * amp
        weight = (((yy + wave) / period % 1.0) < 0.5).astype(np.float32)
    else:
        raise ValueError(f"unknown background {kind!r}")
    img = base[None, None, :] * (1.0 - weight[..., None]) + other[None, None, :] * weight[..., None]
    return img


# ------------------------------------------------------------------ render
def render(scene: Scene, size: int = 32, supersample: int = 2) -> Image.Image:
    """Paint ``scene`` as an RGB image of ``size`` x ``size`` pixels.

    The picture is drawn at ``size * supersample`` pixels and box-filtered
    down, so edges are anti-aliased. Pattern phase, clutter and occlusion
    geometry come from ``scene.detail_seed``, so the same scene always gives
    the same pixels.
    """
    side = size * supersample
    rng = np.random.default_rng(scene.detail_seed)
    canvas = Image.fromarray(np.clip(_background(scene, side, rng), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    palette = list(COLOURS.values())
    # Clutter: short scribbles in random palette colours, behind the shape.
    for _ in range(scene.clutter):
        x0, y0 = rng.uniform(0, side, size=2)
        length = rng.uniform(0.08, 0.2) * side
        a = rng.uniform(0, 2 * math.pi)
        colour = palette[rng.integers(len(palette))]
        width = max(1, int(round(rng.uniform(0.02, 0.04) * side)))
        end = (x0 + length * math.cos(a), y0 + length * math.sin(a))
        draw.line([(x0, y0), end], fill=colour, width=width)
    mask = Image.new("L", (side, side), 0)
    mdraw = ImageDraw.Draw(mask)
    for polygon, fill in _UNIT_SHAPES[scene.shape]:
        mdraw.polygon(_place(polygon, scene, side), fill=fill)
    canvas.paste(COLOURS[scene.colour], (0, 0, side, side), mask)
    if scene.occluded:
        # A bar in a colour that is neither the shape's nor the background's,
        # covering a band across the shape (about a quarter to a third of it).
        others = [c for c in COLOURS if c not in (scene.colour, scene.bg_colour)]
        colour = COLOURS[others[rng.integers(len(others))]]
        r = scene.radius * side
        cx, cy = scene.x * side, scene.y * side
        offset = rng.uniform(0.15, 0.6) * r * (1 if rng.random() < 0.5 else -1)
        half = rng.uniform(0.2, 0.3) * r
        if rng.random() < 0.5:  # vertical bar
            box = (cx + offset - half, 0, cx + offset + half, side)
        else:
            box = (0, cy + offset - half, side, cy + offset + half)
        draw.rectangle(box, fill=colour)
    if supersample > 1:
        canvas = canvas.resize((size, size), Image.Resampling.BOX)
    return canvas


def picture(scene: Scene, world: World, size: int = 32) -> np.ndarray:
    """``scene`` as ``world``'s camera takes it: a ``(size, size, 3)`` uint8 array.

    With ``world.pixel_block = b > 1`` the camera is coarser: the ``size`` px
    rendering is reduced to ``size // b`` px with Pillow's bilinear filter
    (each camera pixel averages a neighbourhood about two of its own pixels
    wide, triangle-weighted, like a low-resolution sensor behind a soft lens),
    and every camera pixel is shown as a ``b`` x ``b`` block.
    """
    block = world.pixel_block
    if block < 1 or size % block:
        raise ValueError(f"pixel_block {block} must be >= 1 and divide the image size {size}")
    image = render(scene, size=size)
    if block == 1:
        return np.asarray(image)
    small = np.asarray(image.resize((size // block, size // block), Image.Resampling.BILINEAR))
    return small.repeat(block, axis=0).repeat(block, axis=1)


# ----------------------------------------------------------------- caption
_PREFIXES: tuple[str, ...] = (
    "a photo of",
    "a picture of",
    "an image of",
    "a drawing of",
    "a rendering of",
    "a low resolution photo of",
    "a close-up photo of",
    "a blurry photo of",
    "a good photo of",
    "a simple picture of",
    "a synthetic image of",
    "this is",
    "there is",
    "here we see",
    "",
)
_OBJECT_NOUNS: tuple[str, ...] = ("object", "shape", "thing", "figure")
_SHAPE_LAST_ENDINGS: tuple[str, ...] = (
    ", which is a {}.",
    ", and it is a {}.",
    ". it is a {}.",
    ": a {}.",
    "; the shape is a {}.",
)
_POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left corner", "at the top left"),
    "top right": ("in the top right corner", "at the top right"),
    "bottom left": ("in the bottom left corner", "at the bottom left"),
    "bottom right": ("in the bottom right corner", "at the bottom right"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "center": ("in the center", "in the middle"),
}
_CLUTTER_PHRASES = ("with clutter around it", "among scattered scribbles", "with some clutter")
_OCCLUSION_PHRASES = ("partly hidden behind a bar", "partly covered by a bar")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _rotation_words(scene: Scene) -> str | None:
    if scene.shape in ROTATION_FREE:
        return None
    turn = abs(scene.angle)
    return "upright" if turn < 8 else ("slightly tilted" if turn < 20 else "tilted")


def _background_phrase(scene: Scene, rng: np.random.Generator) -> str:
    pattern, colour = scene.background, scene.bg_colour
    style = rng.integers(4)
    if style == 0:
        return f"on {_article(pattern)} {pattern} {colour} background"
    if style == 1:
        return f"against {_article(colour)} {colour} {pattern} background"
    if style == 2:
        return f"on {_article(colour)} {colour} background"
    return f"on {_article(pattern)} {pattern} background"


def _details(scene: Scene, rng: np.random.Generator, k: int) -> list[str]:
    """Up to ``k`` true phrases about the scene beyond the shape's own adjectives."""
    pool = [_background_phrase(scene, rng)]
    pool.append(_POSITION_PHRASES[scene.position][rng.integers(2)])
    rot = _rotation_words(scene)
    if rot is not None:
        pool.append(rot)
    if scene.clutter:
        pool.append(_CLUTTER_PHRASES[rng.integers(len(_CLUTTER_PHRASES))])
    if scene.occluded:
        pool.append(_OCCLUSION_PHRASES[rng.integers(len(_OCCLUSION_PHRASES))])
    order = rng.permutation(len(pool))[: min(k, len(pool))]
    return [pool[i] for i in sorted(order)]


def _join(parts: Sequence[str]) -> str:
    return " ".join(p for p in parts if p)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A true sentence about ``scene`` (template, mentioned attributes drawn with ``rng``).

    Every caption names the shape; size, colour, background, position,
    rotation, clutter and occlusion are each mentioned or not. One template in
    three puts the shape name last after a long description ("a small red
    object on a striped blue background in the center, which is a star."), so
    the text tower learns to read a name at late positions, where prompt
    learning puts it (after 16 context tokens).
    """
    adjectives = []
    if rng.random() < 0.5:
        adjectives.append(scene.size)
    if rng.random() < 0.6:
        adjectives.append(scene.colour)
    prefix = _PREFIXES[rng.integers(len(_PREFIXES))]
    n_details = int(rng.integers(0, 5))
    style = rng.random()
    if style < 0.35:  # shape last, after a description of an unnamed object
        noun = _OBJECT_NOUNS[rng.integers(len(_OBJECT_NOUNS))]
        head = _join([*adjectives, noun])
        details = _details(scene, rng, max(n_details, 1))
        ending = _SHAPE_LAST_ENDINGS[rng.integers(len(_SHAPE_LAST_ENDINGS))].format(scene.shape)
        text = _join([prefix, _article(head), head, *details]) + ending
    elif style < 0.85:  # "<prefix> a <adjectives> <shape> <details>."
        head = _join([*adjectives, scene.shape])
        details = _details(scene, rng, n_details)
        text = _join([prefix, _article(head), head, *details]) + "."
    else:  # attribute sentences about "the <shape>"
        facts = [scene.colour] if not adjectives else list(adjectives)
        rot = _rotation_words(scene)
        if rot is not None and rng.random() < 0.5:
            facts.append(rot)
        said = " and ".join(facts)
        text = f"the {scene.shape} is {said}"
        if rng.random() < 0.5:
            text += " " + _background_phrase(scene, rng)
        text += "."
    return " ".join(text.split()).replace(" ,", ",")


def caption_vocabulary() -> tuple[str, ...]:
    """Every word any caption can contain (the demo model stores embeddings for these only)."""
    words: set[str] = set(SHAPES) | set(COLOURS) | set(BACKGROUNDS) | set(SIZES)
    phrases = [
        *_PREFIXES,
        *_OBJECT_NOUNS,
        *_SHAPE_LAST_ENDINGS,
        *(p for group in _POSITION_PHRASES.values() for p in group),
        *_CLUTTER_PHRASES,
        *_OCCLUSION_PHRASES,
        "a an on against background the is and upright slightly tilted . , ; :",
    ]
    for phrase in phrases:
        words.update(phrase.replace("{}", " ").replace(".", " . ").replace(",", " , ").split())
    return tuple(sorted(words))


# -------------------------------------------------------------- batches
def generate(
    n: int,
    seed: int,
    world: World = PRETRAIN_WORLD,
    size: int = 32,
    start: int = 0,
) -> tuple[np.ndarray, list[str], list[Scene]]:
    """Scenes ``start .. start + n - 1`` of ``seed``: images, captions and attributes.

    Returns:
        ``(images, captions, scenes)`` with ``images`` a ``(n, size, size, 3)``
        uint8 array. Scene ``i`` depends only on ``(seed, i)``.
    """
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    captions, scenes = [], []
    for j in range(n):
        index = start + j
        rng = scene_rng(seed, index)
        scene = sample_scene(rng, world)
        images[j] = picture(scene, world, size)
        captions.append(caption(scene, rng))
        scenes.append(scene)
    return images, captions, scenes


def generate_class_balanced(
    per_class: int,
    seed: int,
    world: World = DOWNSTREAM_WORLD,
    size: int = 32,
    shapes: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[Scene]]:
    """``per_class`` scenes of every shape (a classification set), labels by shape index.

    Scene ``j`` of class ``k`` is drawn from ``scene_rng(seed, k * 1_000_003 + j)``
    with its shape forced to class ``k``; the other attributes follow ``world``.

    Returns:
        ``(images, labels, scenes)``: ``(K * per_class, size, size, 3)`` uint8,
        ``(K * per_class,)`` int64 labels in the order of ``shapes``.
    """
    shapes = tuple(world.shapes if shapes is None else shapes)
    total = len(shapes) * per_class
    images = np.empty((total, size, size, 3), dtype=np.uint8)
    labels = np.empty(total, dtype=np.int64)
    scenes = []
    i = 0
    for k, shape in enumerate(shapes):
        forced = replace(world, shapes=(shape,))
        for j in range(per_class):
            scene = sample_scene(scene_rng(seed, k * 1_000_003 + j), forced)
            images[i] = picture(scene, forced, size)
            labels[i] = k
            scenes.append(scene)
            i += 1
    return images, labels, scenes
