"""Write the procedural world to disk as real files: mp4 videos (PyAV), PNG images, LLaVA
conversation JSON, LLaVA-Hound-style DPO JSONL. Deterministic per seed; splits never share one.

    python -m ppllava.data.world --out data/tiny --train 400 --val 100 --test 100
    python -m ppllava.data.world --out data/free --layout free --diagnostics quadrants=150 shifted=150 free=150
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import av
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ppllava.data.scenes import LAYOUTS, NEEDLE_TASKS, OBJECT_LIMITS, boxes, needle_spans, random_scene, render
from ppllava.data.tasks import IMAGE_TASKS, NUMBERS, TEXT_TASKS, VIDEO_TASKS, ask, ask_lookup, ask_needle, vocabulary
from ppllava.validation import check_fields, count_type

SPLIT_SEED_BASE = {"train": 0, "val": 1_000_000, "test": 2_000_000, "long": 3_000_000,
                   "needle-train": 4_000_000, "needle-val": 5_000_000, "needle-test": 6_000_000,
                   "dpo-train": 7_000_000, "dpo-val": 8_000_000, "dpo-test": 9_000_000}
DIAGNOSTIC_SEED = 10  # diagnostic splits draw from (seed, 10, layout, index): apart from every split above
MEDIA = ("video", "image", "multi", "text")


@dataclass
class WorldSpec:
    """What the world draws. `layout` (scenes.LAYOUTS): "quadrants" (one object at each quadrant's
    centre, the world every trained result and notebook of the kit was measured on, and so still the
    default until they are re-measured, issue #14), "shifted" (those objects 2-6 px off centre) or
    "free" (2-6 objects anywhere, radius 6-16 px, partly overlapping, movers crossing 1-2 patches)."""
    size: int = 64  # frame side, pixels (336 for the paper shape)
    frames: int = 8  # frames per short clip
    fps: int = 8
    # share of records per kind: video | image | multi | text (text-only option lookups, no media)
    media_mix: Dict[str, float] = field(default_factory=lambda: {"video": 0.4, "image": 0.25, "multi": 0.15, "text": 0.2})
    layout: str = "quadrants"
    max_objects: Optional[int] = None  # most objects per scene; None: the layout's own (4 for quadrants, 6 free)
    long_frames: Sequence[int] = (16, 64, 256)  # lengths of the needle videos
    needle_frames: Sequence[int] = (1, 2)  # how long the asked-about object is visible
    task_weights: Optional[Dict[str, float]] = None  # None: tasks equally likely; {"mc": 10}: ten times more MC
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type against its annotation, naming the field and the value
        # libx264 in yuv420p needs even sides; below 16 px the objects (radius 10-14 px at 64) vanish.
        if self.size < 16 or self.size % 2:
            raise ValueError(f"WorldSpec.size must be an even number of pixels >= 16, got {self.size}")
        for name in ("frames", "fps"):
            if getattr(self, name) < 1:
                raise ValueError(f"WorldSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"WorldSpec.layout must be one of {LAYOUTS}, got {self.layout!r}")
        low, high = OBJECT_LIMITS[self.layout]
        if self.max_objects is not None and not low <= self.max_objects <= high:
            why = "one object per quadrant" if self.layout != "free" else "free layout"
            raise ValueError(f"WorldSpec.max_objects must be in [{low}, {high}] ({why}), got {self.max_objects}")
        if self.seed < 0:
            raise ValueError(f"WorldSpec.seed must be >= 0, got {self.seed}")
        if not self.needle_frames or min(self.needle_frames) < 1:
            raise ValueError(f"WorldSpec.needle_frames must be frame counts >= 1, got {list(self.needle_frames)}")
        for n in self.long_frames:  # a needle of needle_frames frames has to fit in the video
            if n < max(self.needle_frames):
                raise ValueError(f"WorldSpec.long_frames: {n} frames cannot hold a needle of "
                                 f"{max(self.needle_frames)} frames (needle_frames {list(self.needle_frames)})")
        for kind, share in self.media_mix.items():
            if kind not in MEDIA:
                raise ValueError(f"WorldSpec.media_mix: unknown kind {kind!r}; kinds are {MEDIA}")
            if not share >= 0:
                raise ValueError(f"WorldSpec.media_mix[{kind!r}] must be >= 0, got {share}")
        if not sum(self.media_mix.values()) > 0:
            raise ValueError(f"WorldSpec.media_mix needs a share > 0, got {self.media_mix}")
        known = set(VIDEO_TASKS) | set(IMAGE_TASKS) | set(TEXT_TASKS)
        weights = self.task_weights or {}
        for task, weight in weights.items():
            if task not in known:
                raise ValueError(f"WorldSpec.task_weights: unknown task {task!r}; tasks are {sorted(known)}")
            if not weight >= 0:
                raise ValueError(f"WorldSpec.task_weights[{task!r}] must be >= 0, got {weight}")
        for tasks in (VIDEO_TASKS, IMAGE_TASKS):  # the weights are normalised per media type
            if not sum(weights.get(t, 1.0) for t in tasks) > 0:
                raise ValueError(f"WorldSpec.task_weights {weights} leave every task of {list(tasks)} at weight 0")


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """(T, H, W, 3) uint8 -> H.264 mp4 through PyAV (no system ffmpeg), near-lossless (crf 10).

    x264's macroblock tree (mbtree) made the same frames encode to different bytes from run to run
    (1 video in 12 of the tiny world, up to 16 grey levels apart once decoded), so two writes of one
    world trained two different models; without it the bytes repeat exactly (files ~15 % larger)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "10", "x264-params": "mbtree=0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _conversation(media_tokens: str, question: str, answer: str) -> List[Dict[str, str]]:
    return [{"from": "human", "value": f"{media_tokens}\n{question}"}, {"from": "gpt", "value": answer}]


def _pick(rng, tasks, scene, media, weights: Optional[Dict[str, float]] = None, max_count: int = 4):
    """The first task, in a random order, that the scene supports; `weights` (task -> relative
    weight, 1 for tasks not named) skews that order, e.g. {"mc": 10} for ten times more multiple choice."""
    if weights:
        p = np.array([float(weights.get(t, 1.0)) for t in tasks])
        order = rng.choice(len(tasks), size=len(tasks), replace=False, p=p / p.sum())
    else:
        order = rng.permutation(len(tasks))
    for t in order:
        try:
            return ask(rng, scene, tasks[t], media, max_count=max_count)
        except ValueError:  # the scene cannot support this task: take the next
            continue
    raise AssertionError("every scene supports colour, shape, count and caption")


class WorldWriter:
    def __init__(self, root: Path, spec: WorldSpec):
        self.root, self.spec = Path(root), spec
        for sub in ("videos", "images"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _seed(self, split: str, index: int) -> int:
        return self.spec.seed * 10_000_000 + SPLIT_SEED_BASE[split] + index

    def _objects(self, rng, least: int = 1) -> int:
        """How many objects a scene holds: from the layout's least (or `least`, e.g. 2 for a needle's scene:
        the needle and one that stays) to its most."""
        low, high = OBJECT_LIMITS[self.spec.layout]
        return int(rng.integers(max(low, least), (self.spec.max_objects or high) + 1))

    def _scene(self, rng, num_frames: int, num_objects: int, **kwargs):
        return random_scene(rng, self.spec.size, num_frames, num_objects, layout=self.spec.layout, **kwargs)

    def _needle_scene(self, rng, num_frames: int, needle: int, task: str):
        """The scene of an order (two brief objects) or count (one object seen 1-3 times) needle."""
        brief = 2 if task == "order" else int(rng.integers(1, 4))
        spans = needle_spans(rng, num_frames, needle, brief)
        return self._scene(rng, num_frames, self._objects(rng, least=brief + 1), spans=spans,
                           repeat_first=task == "count")

    def video_record(self, split: str, index: int, rng, num_frames: int, needle: Optional[int] = None,
                     needle_start: Optional[Tuple[int, int]] = None, needle_task: str = "recall"):
        """A video record and its DPO pair. `needle`: a needle video, whose first object is seen for only
        that many frames (`needle_task` "recall"), or whose first objects are ("order", "count"; see
        `tasks.ask_needle`)."""
        spec = self.spec
        if needle and needle_task != "recall":
            if needle_start is not None:
                raise ValueError(f"needle_start places a recall needle; a {needle_task!r} needle's spans are drawn whole")
            scene = self._needle_scene(rng, num_frames, needle, needle_task)
        else:
            scene = self._scene(rng, num_frames, self._objects(rng, least=2 if needle else 1), needle=needle,
                                needle_start=needle_start)
        frames, masks = render(scene)
        name = f"{split}-{index:06d}" + (f"-long{num_frames}" if needle else "")
        write_video(self.root / "videos" / f"{name}.mp4", frames, spec.fps)
        max_count = OBJECT_LIMITS[spec.layout][1]
        q = (ask_needle(rng, scene, needle_task) if needle
             else _pick(rng, VIDEO_TASKS, scene, "video", spec.task_weights, max_count))
        target = None if q.target is None else scene.objects[q.target]
        # Every object of the target's name: the target alone, or a count needle's 1-3 appearances (objects of
        # one name, each on screen in frames of its own, so each frame's box is the one appearance seen there).
        named = [o for o in scene.objects if target is not None and o.name == target.name]
        per_frame = boxes(masks)
        record = {"id": name, "video": f"videos/{name}.mp4", "conversations": _conversation("<video>", q.question, q.answer),
                  "task": q.task, "frames": num_frames,
                  "fps": spec.fps, "objects": [o.name for o in scene.objects],
                  "target": None if target is None else {"colour": target.colour, "shape": target.shape},
                  "boxes": None if target is None else [next((b for o, b in zip(scene.objects, row) if o in named
                                                              and b is not None), None) for row in per_frame],
                  "scene": scene.to_dict()}
        if q.options:
            record["options"] = q.options
        if needle_task == "order" and needle:
            record["named"] = [{"colour": o.colour, "shape": o.shape} for o in scene.objects[:2]]
        if needle:
            brief = scene.objects[:2] if needle_task == "order" else named
            record["needle_frames"] = [t for t in range(num_frames) if any(o.visible(t) for o in brief)]
        dpo = {"id": name, "video": record["video"], "prompt": q.question, "chosen": q.answer,
               "rejected": q.hallucination, "task": record["task"]}
        return record, dpo

    def image_record(self, split: str, index: int, rng):
        scene = self._scene(rng, 1, self._objects(rng), moving=False)
        frames, masks = render(scene)
        name = f"{split}-{index:06d}"
        Image.fromarray(frames[0]).save(self.root / "images" / f"{name}.png")
        q = _pick(rng, IMAGE_TASKS, scene, "image", self.spec.task_weights, OBJECT_LIMITS[self.spec.layout][1])
        return {"id": name, "image": f"images/{name}.png", "conversations": _conversation("<image>", q.question, q.answer),
                "task": q.task, "objects": [o.name for o in scene.objects], "target": None if q.target is None else {"colour": scene.objects[q.target].colour,
                                                                          "shape": scene.objects[q.target].shape},
                "boxes": None if q.target is None else [boxes(masks)[0][q.target]], "scene": scene.to_dict(),
                **({"options": q.options} if q.options else {})}

    def multi_record(self, split: str, index: int, rng):
        count = int(rng.integers(2, 4))
        where = int(rng.integers(count))
        low = OBJECT_LIMITS[self.spec.layout][0]  # 1-2 objects an image, 2-3 in the free layout
        scenes = [self._scene(rng, 1, int(rng.integers(low, low + 2)), moving=False) for _ in range(count)]
        target = scenes[where].objects[0]
        for j in range(count):  # the asked-about object is in exactly one image: redraw the others until so
            while j != where and any((o.colour, o.shape) == (target.colour, target.shape) for o in scenes[j].objects):
                scenes[j] = self._scene(rng, 1, int(rng.integers(low, low + 2)), moving=False)
        paths, per_image = [], []
        for j, scene in enumerate(scenes):
            frames, masks = render(scene)
            path = f"images/{split}-{index:06d}-{j}.png"
            Image.fromarray(frames[0]).save(self.root / path)
            paths.append(path)
            per_image.append(boxes(masks)[0][0] if j == where else None)
        question = f"which image shows the {target.name} ?"
        answer = f"image {NUMBERS[where + 1]}"
        wrong = f"image {NUMBERS[1 + (where + 1) % count]}"
        return {"id": f"{split}-{index:06d}", "images": paths,
                "conversations": _conversation("<image>" * count, question, answer), "task": "which_image",
                "target": {"colour": target.colour, "shape": target.shape}, "boxes": per_image, "rejected": wrong}

    def text_record(self, split: str, index: int, rng):
        q = ask_lookup(rng)
        return {"id": f"{split}-{index:06d}",
                "conversations": [{"from": "human", "value": q.question}, {"from": "gpt", "value": q.answer}],
                "task": q.task, "options": q.options}

    def write_split(self, split: str, count: int, progress: bool = True, seeds=None) -> Dict[str, int]:
        """`{split}.json` (and `{split}_dpo.jsonl`); `seeds(index)`: each record's seed, by default
        the split's own range (SPLIT_SEED_BASE)."""
        records, dpo = [], []
        kinds = list(self.spec.media_mix)
        weights = np.array([self.spec.media_mix[k] for k in kinds], dtype=float)
        for index in tqdm(range(count), desc=f"world {split}", disable=not progress):
            rng = np.random.default_rng(self._seed(split, index) if seeds is None else seeds(index))
            kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
            if kind == "video":
                record, pair = self.video_record(split, index, rng, self.spec.frames)
                dpo.append(pair)
            elif kind == "image":
                record = self.image_record(split, index, rng)
            elif kind == "text":
                record = self.text_record(split, index, rng)
            else:
                record = self.multi_record(split, index, rng)
            records.append(record)
        self._dump(split, records, dpo)
        return {"records": len(records), "dpo": len(dpo)}

    def write_diagnostic_split(self, layout: str, count: int, progress: bool = True) -> Dict[str, int]:
        """`test_{layout}.json` (and its DPO pairs): a held-out split of `layout`'s own world at its
        own object count, whatever layout this world trains on, from seeds no other split draws."""
        if layout not in LAYOUTS:
            raise ValueError(f"diagnostic split: unknown layout {layout!r}; layouts are {LAYOUTS}")
        writer = WorldWriter(self.root, replace(self.spec, layout=layout, max_objects=None))
        seeds = lambda index: (self.spec.seed, DIAGNOSTIC_SEED, LAYOUTS.index(layout), index)  # noqa: E731
        return writer.write_split(f"test_{layout}", count, progress, seeds=seeds)

    def write_long(self, per_length: int, progress: bool = True) -> Dict[str, int]:
        """Needle-in-a-long-video records: the asked-about object fills 1-2 frames of each video."""
        records = []
        jobs = [(n, i) for n in self.spec.long_frames for i in range(per_length)]
        for index, (num_frames, _) in enumerate(tqdm(jobs, desc="world long", disable=not progress)):
            rng = np.random.default_rng(self._seed("long", index))
            needle = int(self.spec.needle_frames[int(rng.integers(len(self.spec.needle_frames)))])
            records.append(self.video_record("long", index, rng, num_frames, needle=needle)[0])
        self._dump("long", records, [])
        return {"records": len(records)}

    def write_needle_split(self, split: str, count: int, num_frames: int, progress: bool = True,
                           depth_bins: int = 0, tasks: Sequence[str] = ("recall",)) -> Dict[str, int]:
        """`{split}.json` of needle videos of one length (split "train" draws from "needle-train" seeds).
        Video i asks `tasks[i % len(tasks)]` (scenes.NEEDLE_TASKS). `depth_bins` > 0: the i-th recall
        video's needle first appears in depth bin i % depth_bins (`needle_depth_range`), so the recall
        videos are balanced over `evaluate.counts_by_depth`'s bins; order and count videos draw their
        appearances anywhere they fit (two or three brief appearances cannot all start in the last bin)."""
        _check_needle_tasks(tasks, self.spec)
        records = []
        for index in tqdm(range(count), desc=f"needle {split} ({num_frames} frames)", disable=not progress):
            rng = np.random.default_rng((self.spec.seed, SPLIT_SEED_BASE[f"needle-{split}"], num_frames, index))
            task = tasks[index % len(tasks)]
            if task != "recall":
                needle = int(self.spec.needle_frames[int(rng.integers(len(self.spec.needle_frames)))])
                records.append(self.video_record(f"needle-{split}", index, rng, num_frames, needle=needle,
                                                 needle_task=task)[0])
                continue
            # needle length -> the first frames it may start at (None: anywhere it fits)
            starts = {n: None for n in self.spec.needle_frames}
            if depth_bins:  # only the needle lengths that can start in this video's bin
                b = (index // len(tasks)) % depth_bins  # the recall videos' own count
                starts = {n: r for n in starts if (r := needle_depth_range(b, depth_bins, num_frames, n)) is not None}
                if not starts:
                    raise ValueError(f"no needle of {list(self.spec.needle_frames)} frames can start in depth bin "
                                     f"{b} of {depth_bins} in a {num_frames}-frame video")
            lengths = list(starts)
            needle = int(lengths[int(rng.integers(len(lengths)))])
            records.append(self.video_record(f"needle-{split}", index, rng, num_frames, needle=needle,
                                             needle_start=starts[needle])[0])
        self._dump(split, records, [])
        return {"records": len(records)}

    def write_preference_split(self, split: str, count: int, progress: bool = True) -> Dict[str, int]:
        """`{split}_dpo.jsonl` from `count` videos of their own ("dpo-{split}" seeds), none of them in
        an SFT split: the SFT model has not memorised them, so its answers err as on any new video."""
        pairs = []
        for index in tqdm(range(count), desc=f"world dpo-{split}", disable=not progress):
            rng = np.random.default_rng((self.spec.seed, SPLIT_SEED_BASE[f"dpo-{split}"], index))
            pairs.append(self.video_record(f"dpo-{split}", index, rng, self.spec.frames)[1])
        (self.root / f"{split}_dpo.jsonl").write_text("".join(json.dumps(d) + "\n" for d in pairs))
        return {"dpo": len(pairs)}

    def _dump(self, split: str, records: List[dict], dpo: List[dict]) -> None:
        (self.root / f"{split}.json").write_text(json.dumps(records, indent=1))
        if dpo:
            (self.root / f"{split}_dpo.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dpo))


def write_world(root, spec: Optional[WorldSpec] = None, *, train: int = 400, val: int = 100, test: int = 100,
                long_per_length: int = 30, dpo_videos: Optional[Dict[str, int]] = None,
                diagnostics: Optional[Dict[str, int]] = None, progress: bool = True) -> Dict[str, Dict[str, int]]:
    """Write every split under `root`, with world.json describing the spec and vocabulary.

    dpo_videos: fresh videos for a split's DPO pairs, e.g. {"train": 3000, "test": 1000}; a split not
    named takes its pairs from its own video records (for train: videos the SFT stages trained on).
    diagnostics: held-out `test_{layout}.json` splits of other layouts, e.g. {"quadrants": 150,
    "shifted": 150, "free": 150}: a model that learned the quadrant lattice scores apart on them."""
    spec = spec or WorldSpec()
    unknown = set(dpo_videos or {}) - {"train", "val", "test"}
    if unknown:
        raise ValueError(f"dpo_videos: unknown splits {sorted(unknown)}; splits are train, val, test")
    unknown = set(diagnostics or {}) - set(LAYOUTS)
    if unknown:
        raise ValueError(f"diagnostics: unknown layouts {sorted(unknown)}; layouts are {LAYOUTS}")
    sizes = {"train": train, "val": val, "test": test, "long_per_length": long_per_length,
             **{f"dpo_videos[{k!r}]": v for k, v in (dpo_videos or {}).items()},
             **{f"diagnostics[{k!r}]": v for k, v in (diagnostics or {}).items()}}
    for name, n in sizes.items():  # before any directory is made
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"write_world: {name} must be a count >= 0, got {n!r}")
    writer = WorldWriter(Path(root), spec)
    counts = {split: writer.write_split(split, n, progress) for split, n in (("train", train), ("val", val), ("test", test)) if n}
    for split, n in (dpo_videos or {}).items():  # after the split itself, whose pairs these replace
        counts.setdefault(split, {}).update(writer.write_preference_split(split, n, progress))
    if long_per_length:
        counts["long"] = writer.write_long(long_per_length, progress)
    for layout, n in (diagnostics or {}).items():
        if n:
            counts[f"test_{layout}"] = writer.write_diagnostic_split(layout, n, progress)
    meta = {"spec": {**asdict(spec), "long_frames": list(spec.long_frames), "needle_frames": list(spec.needle_frames)},
            "counts": counts, "vocabulary": vocabulary()}
    (Path(root) / "world.json").write_text(json.dumps(meta, indent=1))
    return counts


# The most objects a needle scene of each task can hold (`WorldWriter._needle_scene`): its brief ones (one
# recall needle, two order needles, up to three appearances counted) and one that stays on screen.
NEEDLE_OBJECTS = {"recall": 2, "order": 3, "count": 4}


def _check_needle_tasks(tasks: Sequence[str], spec: WorldSpec) -> None:
    unknown = [t for t in tasks if t not in NEEDLE_TASKS]
    if isinstance(tasks, str) or not tasks or unknown:
        raise ValueError(f"needle tasks {tasks!r}: give a list of {NEEDLE_TASKS}")
    most = spec.max_objects or OBJECT_LIMITS[spec.layout][1]
    short = {task: NEEDLE_OBJECTS[task] for task in dict.fromkeys(tasks) if NEEDLE_OBJECTS[task] > most}
    if short:
        raise ValueError(f"WorldSpec.max_objects = {most} is too few for needle task(s) {short}: the objects a scene "
                         f"of each can need (its brief ones and one that stays); raise max_objects or drop the task")


def needle_depth_range(depth_bin: int, bins: int, num_frames: int, needle: int) -> Optional[Tuple[int, int]]:
    """The first frames (lo, hi), inclusive, at which a needle of `needle` frames lies in depth bin `depth_bin`
    of `bins` as `evaluate.counts_by_depth` bins it (first frame / frames), or None if it cannot start there."""
    if not 0 <= depth_bin < bins:
        raise ValueError(f"depth_bin must be in [0, {bins}), got {depth_bin}")
    lo = -(-depth_bin * num_frames // bins)  # ceil: the first frame with int(bins * t / T) == depth_bin
    hi = min(-(-(depth_bin + 1) * num_frames // bins) - 1, num_frames - needle)
    return (lo, hi) if lo <= hi else None


def write_needle_world(root, num_frames: int, spec: Optional[WorldSpec] = None, *, train: int = 200, val: int = 40,
                       test: int = 100, test_depth_bins: int = 0, tasks: Sequence[str] = ("recall",),
                       progress: bool = True) -> Dict[str, Dict[str, int]]:
    """A world of needle videos of one length, in the usual layout ({train,val,test}.json): each asks
    about objects visible in only `spec.needle_frames` frames, the long-video setting where averaging
    windows that span many frames loses them (DESIGN.md §4). `tasks` (taken in turn, video by video):
    "recall" the colour of one brief object, the "order" of two, "count" one object's 1-3 appearances
    (`tasks.ask_needle`). `test_depth_bins` > 0: the test split's recall videos balanced over that many
    depth bins (`WorldWriter.write_needle_split`)."""
    spec = spec or WorldSpec()
    _check_needle_tasks(tasks, spec)  # before any directory is made
    writer = WorldWriter(Path(root), spec)
    counts = {split: writer.write_needle_split(split, n, num_frames, progress,
                                               depth_bins=test_depth_bins if split == "test" else 0, tasks=tuple(tasks))
              for split, n in (("train", train), ("val", val), ("test", test)) if n}
    meta = {"spec": {**asdict(spec), "long_frames": [num_frames], "needle_frames": list(spec.needle_frames)},
            "counts": counts, "vocabulary": vocabulary(), "needle_world_frames": num_frames,
            "needle_tasks": list(tasks)}
    if test_depth_bins:
        meta["test_depth_bins"] = test_depth_bins
    (Path(root) / "world.json").write_text(json.dumps(meta, indent=1))
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--size", type=count_type(1), default=64)
    parser.add_argument("--frames", type=count_type(1), default=8)
    parser.add_argument("--fps", type=count_type(1), default=8)
    parser.add_argument("--train", type=count_type(0), default=400)
    parser.add_argument("--val", type=count_type(0), default=100)
    parser.add_argument("--test", type=count_type(0), default=100)
    parser.add_argument("--long-frames", type=count_type(1), nargs="*", default=[16, 64, 256])
    parser.add_argument("--long-per-length", type=count_type(0), default=30)
    parser.add_argument("--seed", type=count_type(0), default=0)
    parser.add_argument("--layout", choices=LAYOUTS, default="quadrants",
                        help="where objects go: quadrants (the kit's measured world), shifted, or free (anywhere)")
    parser.add_argument("--max-objects", type=count_type(1), default=None,
                        help="most objects per scene (default: the layout's own, 4 or 6)")
    parser.add_argument("--diagnostics", nargs="*", default=[], metavar="LAYOUT=COUNT",
                        help="held-out test_LAYOUT.json splits of other layouts, e.g. quadrants=150 shifted=150 free=150")
    parser.add_argument("--task-weight", nargs="*", default=[], metavar="TASK=WEIGHT",
                        help="skew the question mix, e.g. mc=10 (others weigh 1)")
    parser.add_argument("--dpo-videos", nargs="*", default=[], metavar="SPLIT=COUNT",
                        help="DPO pairs from videos of their own, e.g. train=3000 test=1000 (default: the split's videos)")
    args = parser.parse_args(argv)
    # Everything is checked before write_world creates the first directory.
    weights = {k: _number(parser, "--task-weight", k, v, float) for k, _, v in (i.partition("=") for i in args.task_weight)}
    dpo_videos = {k: _number(parser, "--dpo-videos", k, v, int) for k, _, v in (i.partition("=") for i in args.dpo_videos)}
    unknown = set(dpo_videos) - {"train", "val", "test"}
    if unknown or any(n < 0 for n in dpo_videos.values()):
        parser.error(f"--dpo-videos takes train, val or test = a count >= 0, got {args.dpo_videos}")
    diagnostics = {k: _number(parser, "--diagnostics", k, v, int) for k, _, v in (i.partition("=") for i in args.diagnostics)}
    if set(diagnostics) - set(LAYOUTS) or any(n < 0 for n in diagnostics.values()):
        parser.error(f"--diagnostics takes {', '.join(LAYOUTS)} = a count >= 0, got {args.diagnostics}")
    try:
        spec = WorldSpec(size=args.size, frames=args.frames, fps=args.fps, long_frames=tuple(args.long_frames),
                         task_weights=weights or None, seed=args.seed, layout=args.layout, max_objects=args.max_objects)
    except ValueError as err:
        parser.error(str(err))
    counts = write_world(args.out, spec, train=args.train, val=args.val, test=args.test,
                         long_per_length=args.long_per_length if args.long_frames else 0, dpo_videos=dpo_videos or None,
                         diagnostics=diagnostics or None)
    print(json.dumps(counts))


def _number(parser: argparse.ArgumentParser, flag: str, key: str, value: str, kind: type):
    """`value` of a KEY=VALUE item as `kind`, or an argparse error naming the flag and the item."""
    try:
        return kind(value)
    except ValueError:
        parser.error(f"{flag} {key}={value}: expected KEY={kind.__name__}")


if __name__ == "__main__":
    main()
