"""The procedural world (DESIGN.md §3): coloured shapes on a dark background that move, appear and
disappear. A scene is data (`Scene`), drawn deterministically from a seed; `render` turns it into
frames and per-object masks. Nothing here touches the disk (see `ppllava.data.world`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
    "yellow": (240, 220, 40), "purple": (170, 60, 220), "orange": (250, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "star")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BACKGROUND = (20, 20, 24)


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
                 needle: Optional[int] = None) -> Scene:
    """A scene of distinct (colour, shape) objects of radius 10-14 px at 64 px (scaled with `size`),
    each starting in its own quadrant, with distinct colours and distinct shapes. `needle`: the
    first object is visible in only that many frames (the asked-about event of a long video), the
    others stay throughout, and nothing moves."""
    if not 1 <= num_objects <= 4:
        raise ValueError(f"num_objects must be in [1, 4] (one per quadrant), got {num_objects}")
    # Distinct colours and distinct shapes, so "the star" or "the red object" names one object.
    colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))[:num_objects]]
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:num_objects]]
    quadrants = [int(q) for q in rng.permutation(4)[:num_objects]]
    claimed = set(quadrants)  # a mover only crosses into a quadrant nobody holds or moves into
    scale = size / 64
    objects = []
    for k, (colour, shape, quadrant) in enumerate(zip(colours, shapes, quadrants)):
        radius = float(rng.uniform(10, 14)) * scale
        qx, qy = quadrant % 2, quadrant // 2
        start = ((qx + 0.5) * size / 2, (qy + 0.5) * size / 2)
        velocity = (0.0, 0.0)
        free = [d for d, (dx, dy) in DIRECTIONS.items()
                if 0 <= qx + dx <= 1 and 0 <= qy + dy <= 1 and (qx + dx) + 2 * (qy + dy) not in claimed]
        if moving and free and needle is None and num_frames > 1 and rng.random() < 0.7:
            direction = free[int(rng.integers(len(free)))]
            dx, dy = DIRECTIONS[direction]
            claimed.add((qx + dx) + 2 * (qy + dy))
            speed = (size / 2) / max(1, num_frames - 1)  # cross to the neighbouring quadrant over the clip
            velocity = (dx * speed, dy * speed)
        appear, vanish = 0, num_frames
        if needle is not None and k == 0:
            appear = int(rng.integers(0, num_frames - needle + 1))
            vanish = appear + needle
        elif needle is None and num_frames >= 4 and rng.random() < 0.3:
            appear = int(rng.integers(0, num_frames // 2))  # appears later
        objects.append(SceneObject(shape, colour, radius, start, velocity, appear, vanish))
    return Scene(size, num_frames, objects)
