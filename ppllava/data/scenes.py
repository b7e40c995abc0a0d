"""The procedural world (DESIGN.md §3): coloured shapes on a dark background that move, appear and
disappear. A scene is data (`Scene`), drawn deterministically from a seed; `render` turns it into
frames and per-object masks. Nothing here touches the disk (see `ppllava.data.world`).

Three layouts (`LAYOUTS`, issue #14): "quadrants" puts each object at the centre of its own quadrant,
which at 64 px with 16 px patches makes every pooled token one object by construction; "shifted"
moves each of those objects 2-6 px off its centre (a diagnostic of that shortcut); "free" places
objects anywhere, of any size in 6-16 px, overlapping in part.
"""
from __future__ import annotations

import math
from dataclasses import asdict, astuple, dataclass, field, replace
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
    "yellow": (240, 220, 40), "purple": (170, 60, 220), "orange": (250, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "star")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BACKGROUND = (20, 20, 24)
LAYOUTS = ("quadrants", "shifted", "free")
# Objects per scene each layout allows: one per quadrant, or up to six anywhere.
OBJECT_LIMITS = {"quadrants": (1, 4), "shifted": (1, 4), "free": (2, 6)}
SHIFT_PX = (2.0, 6.0)  # "shifted": distance of each object from its quadrant centre, pixels at 64 px
FREE_RADIUS_PX = (6.0, 16.0)  # "free": object radius, pixels at 64 px
# "free": a mover travels one to two patches of a 4 x 4 grid (16-32 px at 64 px) while it is visible,
# so the model sees it change patch whatever the resolution it reads the frames at.
FREE_TRAVEL_PATCHES = (1.0, 2.0)
MIN_VISIBLE = 0.6  # "free": share of its own pixels an object keeps visible in every frame it is on
# Needle questions of a long video (issue #15): recall one brief object's colour; the order of two brief
# objects; how many separate times one object appears (1-3 brief appearances).
NEEDLE_TASKS = ("recall", "order", "count")
NEEDLE_GAP = 1  # frames at least between two brief appearances, so they are separate events


@dataclass
class SceneObject:
    shape: str
    colour: str
    radius: float  # pixels
    start: Tuple[float, float]  # centre (x, y) at `appear`, pixels
    velocity: Tuple[float, float]  # pixels per frame
    appear: int  # first visible frame
    vanish: int  # first frame no longer visible

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def direction(self) -> Optional[str]:
        vx, vy = self.velocity
        if vx == vy == 0:
            return None
        return next(d for d, (dx, dy) in DIRECTIONS.items() if (dx, dy) == (int(np.sign(vx)), int(np.sign(vy))))

    def centre(self, t: int) -> Tuple[float, float]:
        dt = t - self.appear
        return self.start[0] + self.velocity[0] * dt, self.start[1] + self.velocity[1] * dt

    def visible(self, t: int) -> bool:
        return self.appear <= t < self.vanish


@dataclass
class Scene:
    size: int  # square frames, pixels
    num_frames: int
    objects: List[SceneObject] = field(default_factory=list)

    def to_dict(self) -> Dict[str, object]:
        """Plain JSON-able data: a record carries its scene, so its ground truth can be redrawn exactly."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, object]) -> "Scene":
        objects = [SceneObject(**{**o, "start": tuple(o["start"]), "velocity": tuple(o["velocity"])})
                   for o in data["objects"]]
        return cls(int(data["size"]), int(data["num_frames"]), objects)


def _polygon(shape: str, cx: float, cy: float, r: float) -> List[Tuple[float, float]]:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + k * math.pi / 5),
                 cy + (r if k % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES}")


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, t: int, fill) -> None:
    cx, cy = obj.centre(t)
    if obj.shape == "circle":
        draw.ellipse([cx - obj.radius, cy - obj.radius, cx + obj.radius, cy + obj.radius], fill=fill)
    else:
        draw.polygon(_polygon(obj.shape, cx, cy, obj.radius), fill=fill)


def render(scene: Scene, frames: Optional[List[int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Frames (T, S, S, 3) uint8 and visible-pixel masks (T, K, S, S) bool, objects drawn in order
    (a later object covers an earlier one, and the masks say so)."""
    frames = list(range(scene.num_frames)) if frames is None else frames
    S, K = scene.size, len(scene.objects)
    video = np.empty((len(frames), S, S, 3), dtype=np.uint8)
    masks = np.zeros((len(frames), K, S, S), dtype=bool)
    for i, t in enumerate(frames):
        image = Image.new("RGB", (S, S), BACKGROUND)
        label = Image.new("L", (S, S), 0)  # which object owns each pixel (k + 1)
        draw, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
        for k, obj in enumerate(scene.objects):
            if obj.visible(t):
                _draw(draw, obj, t, COLOURS[obj.colour])
                _draw(draw_label, obj, t, k + 1)
        video[i] = np.asarray(image)
        owner = np.asarray(label)
        for k in range(K):
            masks[i, k] = owner == k + 1
    return video, masks


def boxes(masks: np.ndarray) -> List[List[Optional[List[int]]]]:
    """Per frame, per object: [x0, y0, x1, y1] (inclusive-exclusive pixels) or None when unseen."""
    out = []
    for frame in masks:
        row = []
        for mask in frame:
            ys, xs = np.nonzero(mask)
            row.append(None if len(xs) == 0 else [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
        out.append(row)
    return out


def random_scene(rng: np.random.Generator, size: int, num_frames: int, num_objects: int, *, moving: bool = True,
                 needle: Optional[int] = None, layout: str = "quadrants",
                 needle_start: Optional[Tuple[int, int]] = None,
                 spans: Optional[Sequence[Tuple[int, int]]] = None, repeat_first: bool = False) -> Scene:
    """A scene of `num_objects` objects with distinct names ("red star") laid out by `layout` (see
    the module docstring). `needle`: the first object is visible in only that many frames (the
    asked-about event of a long video), the others stay throughout, and nothing moves; `needle_start`
    (lo, hi): the frames its first frame is drawn from, inclusive (default: anywhere it fits).

    `spans` (instead of `needle`; see `needle_spans`): the first len(spans) objects are visible only in
    their (appear, vanish) span, the others stay throughout, and nothing moves. `repeat_first`: those
    objects are one object seen len(spans) separate times (one name, each time in its own place), the
    only names a scene repeats."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; layouts are {LAYOUTS}")
    low, high = OBJECT_LIMITS[layout]
    if not low <= num_objects <= high:
        raise ValueError(f"num_objects must be in [{low}, {high}] for layout {layout!r}, got {num_objects}")
    if spans is not None:
        if needle is not None or needle_start is not None:
            raise ValueError("random_scene: give `spans` or `needle` (with `needle_start`), not both")
        _check_spans(spans, num_frames, num_objects)
    elif repeat_first:
        raise ValueError("random_scene: repeat_first needs `spans`, the times the first object is seen")
    if layout == "free":
        return _free_scene(rng, size, num_frames, num_objects, moving=moving, needle=needle, needle_start=needle_start,
                           spans=spans, repeat_first=repeat_first)
    return _quadrant_scene(rng, size, num_frames, num_objects, moving=moving, needle=needle, needle_start=needle_start,
                           shifted=layout == "shifted", spans=spans, repeat_first=repeat_first)


def _check_spans(spans: Sequence[Tuple[int, int]], num_frames: int, num_objects: int) -> None:
    if not 1 <= len(spans) < num_objects:
        raise ValueError(f"spans: {len(spans)} brief objects in a scene of {num_objects}; give 1 to {num_objects - 1} "
                         "(at least one object stays throughout)")
    for appear, vanish in spans:
        if not 0 <= appear < vanish <= num_frames:
            raise ValueError(f"spans: ({appear}, {vanish}) is not a span of frames in a {num_frames}-frame video")


def needle_spans(rng: np.random.Generator, num_frames: int, needle: int, count: int) -> List[Tuple[int, int]]:
    """`count` (appear, vanish) spans of `needle` frames each, in time order, at least NEEDLE_GAP frames
    apart, placed uniformly: the slack frames (those no span needs) are split at `count` sorted draws."""
    slack = num_frames - count * needle - (count - 1) * NEEDLE_GAP
    if count < 1 or needle < 1 or slack < 0:
        raise ValueError(f"needle_spans: {count} appearance(s) of {needle} frame(s), {NEEDLE_GAP} apart, do not fit "
                         f"in {num_frames} frames")
    cuts = np.sort(rng.integers(0, slack + 1, size=count))
    starts = [int(c) + i * (needle + NEEDLE_GAP) for i, c in enumerate(cuts)]
    return [(s, s + needle) for s in starts]


def _needle_span(rng: np.random.Generator, num_frames: int, needle: int,
                 start: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    """(appear, vanish) of a needle seen for `needle` frames: its first frame drawn from [0, T - needle], or
    from `start` = (lo, hi) inclusive (a depth-balanced split); with no `start`, the draw of every earlier world."""
    lo, hi = start if start is not None else (0, num_frames - needle)
    if not 0 <= lo <= hi <= num_frames - needle:
        raise ValueError(f"needle_start {start}: a needle of {needle} frames in a {num_frames}-frame video "
                         f"must start in [0, {num_frames - needle}]")
    appear = int(rng.integers(lo, hi + 1))
    return appear, appear + needle


def _quadrant_scene(rng: np.random.Generator, size: int, num_frames: int, num_objects: int, *, moving: bool,
                    needle: Optional[int], shifted: bool, needle_start: Optional[Tuple[int, int]] = None,
                    spans: Optional[Sequence[Tuple[int, int]]] = None, repeat_first: bool = False) -> Scene:
    """Distinct colours and distinct shapes, radius 10-14 px at 64 px (scaled with `size`), each object
    starting at the centre of its own quadrant, or, `shifted`, 2-6 px off it (radius capped so the
    object stays inside the frame). The unshifted draws are the world before issue #14, seed for seed."""
    # Distinct colours and distinct shapes, so "the star" or "the red object" names one object.
    colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))[:num_objects]]
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:num_objects]]
    if repeat_first:  # one object seen len(spans) times, each time in a quadrant of its own
        colours[1:len(spans)], shapes[1:len(spans)] = [colours[0]] * (len(spans) - 1), [shapes[0]] * (len(spans) - 1)
    quadrants = [int(q) for q in rng.permutation(4)[:num_objects]]
    claimed = set(quadrants)  # a mover only crosses into a quadrant nobody holds or moves into
    scale = size / 64
    objects = []
    for k, (colour, shape, quadrant) in enumerate(zip(colours, shapes, quadrants)):
        radius = float(rng.uniform(10, 14)) * scale
        qx, qy = quadrant % 2, quadrant // 2
        start = ((qx + 0.5) * size / 2, (qy + 0.5) * size / 2)
        if shifted:  # drawn only here, so the unshifted layout's random stream is the old one
            angle, off = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(*SHIFT_PX)) * scale
            start = (start[0] + off * math.cos(angle), start[1] + off * math.sin(angle))
        velocity = (0.0, 0.0)
        free = [d for d, (dx, dy) in DIRECTIONS.items()
                if 0 <= qx + dx <= 1 and 0 <= qy + dy <= 1 and (qx + dx) + 2 * (qy + dy) not in claimed]
        if moving and free and needle is None and spans is None and num_frames > 1 and rng.random() < 0.7:
            direction = free[int(rng.integers(len(free)))]
            dx, dy = DIRECTIONS[direction]
            claimed.add((qx + dx) + 2 * (qy + dy))
            speed = (size / 2) / max(1, num_frames - 1)  # cross to the neighbouring quadrant over the clip
            velocity = (dx * speed, dy * speed)
        appear, vanish = 0, num_frames
        if needle is not None and k == 0:
            appear, vanish = _needle_span(rng, num_frames, needle, needle_start)
        elif spans is not None:
            appear, vanish = spans[k] if k < len(spans) else (0, num_frames)
        elif needle is None and num_frames >= 4 and rng.random() < 0.3:
            # Appears later, drawn from [0, T/2) as the measured quadrant world always was (the free layout
            # draws from [ceil(T/4), T/2]: see _free_object).
            appear = int(rng.integers(0, num_frames // 2))
        if shifted:  # the shift must not push the object (or, a mover, its end) out of the frame
            ends = [start, (start[0] + velocity[0] * (vanish - 1 - appear), start[1] + velocity[1] * (vanish - 1 - appear))]
            radius = min([radius] + [min(x, y, size - x, size - y) for x, y in ends])
        objects.append(SceneObject(shape, colour, radius, start, velocity, appear, vanish))
    return Scene(size, num_frames, objects)


def _free_names(rng: np.random.Generator, num_objects: int, needle: Optional[int],
                repeats: int = 1) -> List[Tuple[str, str]]:
    """Distinct (colour, shape) names; colours and shapes may repeat ("red star", "red circle"), so a
    question may name only what is unique in its scene (`ppllava.data.tasks`). A needle's shape is
    unique, since its question is "what colour is the {shape} ?". `repeats` > 1: the first name is
    given that many times (one object seen that many times), the rest stay distinct from it."""
    pairs = [(list(COLOURS)[i // len(SHAPES)], SHAPES[i % len(SHAPES)])
             for i in rng.permutation(len(COLOURS) * len(SHAPES))]
    if needle is not None:
        pairs = pairs[:1] + [p for p in pairs[1:] if p[1] != pairs[0][1]]
    return (pairs[:1] * repeats + pairs[1:])[:num_objects]


def _free_object(rng: np.random.Generator, size: int, num_frames: int, name: Tuple[str, str], moving: bool,
                 needle: Optional[int], first: bool, needle_start: Optional[Tuple[int, int]] = None,
                 span: Optional[Tuple[int, int]] = None) -> SceneObject:
    """One object of the free layout: radius, appearance, motion and a start that keeps the whole
    object (its axis-aligned extent, at most `radius` from the centre) in the frame while visible.
    `span` (appear, vanish): a scene of brief objects (random_scene's `spans`), where nothing moves."""
    scale = size / 64
    radius = float(rng.uniform(*FREE_RADIUS_PX)) * scale
    appear, vanish = 0, num_frames
    if span is not None:
        appear, vanish = span
        moving = False
    elif needle is not None and first:
        appear, vanish = _needle_span(rng, num_frames, needle, needle_start)
    elif needle is None and num_frames >= 4 and rng.random() < 0.3:
        # Appears later: in frames [ceil(T/4), T/2], missing from at least the first quarter of the clip.
        # At 8 frames that is the first two, which prompt pooling's temporal kernel 2 mixes into one token:
        # drawn from [0, T/2), an object appearing at frame 1 was in that token, and a quarter of the draws
        # (frame 0) were not late at all (issue #14: temporal order read 0.33 of 114 held-out questions).
        appear = int(rng.integers(num_frames - 3 * num_frames // 4, num_frames // 2 + 1))
    span = vanish - 1 - appear  # frames between its first and last visible frame
    dx = dy = travel = 0.0
    if moving and needle is None and span > 0 and rng.random() < 0.7:
        dx, dy = DIRECTIONS[list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]]
        travel = float(rng.uniform(*FREE_TRAVEL_PATCHES)) * size / 4
    # Along the axis of motion the start leaves room for the travel; radius + travel <= size (16 + 32 at 64).
    lo = [radius + travel * (d < 0) for d in (dx, dy)]
    hi = [size - radius - travel * (d > 0) for d in (dx, dy)]
    start = (float(rng.uniform(lo[0], hi[0])), float(rng.uniform(lo[1], hi[1])))
    speed = travel / span if travel else 0.0
    return SceneObject(name[1], name[0], radius, start, (dx * speed, dy * speed), appear, vanish)


@lru_cache(maxsize=64)
def _solo_pixels(size: int, num_frames: int, *fields) -> np.ndarray:
    """(T,) pixels of one object (SceneObject's fields) drawn alone, per frame. Cached: placing a free
    scene's next object asks again about every object already placed, on every try."""
    _, alone = render(Scene(size, num_frames, [SceneObject(*fields)]))  # (T, 1, S, S): its pixels, uncovered
    return alone[:, 0].sum((1, 2))


def visible_shares(scene: Scene) -> np.ndarray:
    """(K,) the least share of its own pixels each object shows over the frames it is on (1 when
    nothing covers it). A scene where nothing moves is checked with every object on screen at once,
    its worst case, in one frame: a needle world's 256-frame videos stay cheap to draw."""
    if all(o.velocity == (0.0, 0.0) for o in scene.objects):
        scene = Scene(scene.size, 1, [replace(o, appear=0, vanish=1) for o in scene.objects])
    _, seen = render(scene)  # (T, K, S, S)
    shares = np.ones(len(scene.objects))
    for k, obj in enumerate(scene.objects):
        whole, kept = _solo_pixels(scene.size, scene.num_frames, *astuple(obj)), seen[:, k].sum((1, 2))
        on = whole > 0
        if on.any():
            shares[k] = float((kept[on] / whole[on]).min())
    return shares


def _free_scene(rng: np.random.Generator, size: int, num_frames: int, num_objects: int, *, moving: bool,
                needle: Optional[int], tries: int = 200, needle_start: Optional[Tuple[int, int]] = None,
                spans: Optional[Sequence[Tuple[int, int]]] = None, repeat_first: bool = False) -> Scene:
    """Objects placed one at a time, each redrawn (size, motion, place) until every object so far
    keeps MIN_VISIBLE of its pixels in sight; touching and partial cover are allowed. Crowded scenes
    favour the smaller radii that fit, as a packing must."""
    names = _free_names(rng, num_objects, needle, repeats=len(spans) if repeat_first else 1)
    objects: List[SceneObject] = []
    for k, name in enumerate(names):
        span = (spans[k] if k < len(spans) else (0, num_frames)) if spans is not None else None
        for _ in range(tries):
            candidate = _free_object(rng, size, num_frames, name, moving, needle, first=k == 0, needle_start=needle_start,
                                     span=span)
            if visible_shares(Scene(size, num_frames, objects + [candidate])).min() >= MIN_VISIBLE:
                objects.append(candidate)
                break
        else:
            raise ValueError(f"free layout: no place for object {k + 1} of {num_objects} ({' '.join(name)}) in "
                             f"{tries} tries at {size} px; ask for fewer objects or a larger size")
    return Scene(size, num_frames, objects)
