"""The world's layouts (issue #14): quadrants as before, shifted off the lattice, free placement with
motion that can be seen, questions with one answer, and the diagnostic splits of each layout."""
import hashlib
import json
import math
import re

import numpy as np
import pytest

from ppllava.data.scenes import (DIRECTIONS, FREE_RADIUS_PX, MIN_VISIBLE, Scene, random_scene, render,
                                 visible_shares)
from ppllava.data.tasks import ask
from ppllava.data.world import WorldSpec, main, write_needle_world, write_world

# sha256 of the files this exact world wrote with the code before issue #14 (commit 155cf46),
# recorded then: the quadrants layout must draw the same records, seed for seed.
BEFORE_ISSUE_14 = {
    "n/test.json": "c8e1eb3f9432e251d458fb5ca58810b843e0b77495f6eb1e2378606cc8a6e36f",
    "n/train.json": "5519aec66b357c68cdf49ed46fc46052a36b02407463a4c946ff4f43bc8d4d66",
    "w/long.json": "2711f38342d77e950acf8d3afb2121c74e500ad9c67e5c87e6ccdf6b2589fae9",
    "w/test.json": "a0340c7241cc65c68876cd515befa87062f4304b5c351716fd813a6b41a61629",
    "w/test_dpo.jsonl": "0daf786b0cc2be6a8dfdccc05e116aa643884c260ad51d435f6843063c3d7dc1",
    "w/train.json": "12fbabf549853a773ad0295331281165dbbaa05c59b8e440a98486eaaaaa9f7b",
    "w/train_dpo.jsonl": "1de3f1159fe941c530432a62a09a958b8487488a62a005a6a76bb27ede9133cc",
    "w/val.json": "178ee699d8450d7209bb411b94b1836d6e72c578d4790056085556080d1d4196",
    "w/val_dpo.jsonl": "1eed1124ce8c67de9a0143df7bcb2077513bb5eee480f6ebfafaacefa1f165cf",
}


def free_scenes(count=60, size=64, frames=8, **kwargs):
    rngs = (np.random.default_rng(i) for i in range(count))
    return [random_scene(rng, size, frames, int(rng.integers(2, 7)), layout="free", **kwargs) for rng in rngs]


def test_quadrants_reproduces_the_world_before_issue_14(tmp_path):
    # The records carry each scene, question, answer and per-frame boxes, so equal JSON is an equal world.
    write_world(tmp_path / "w", WorldSpec(long_frames=(16, 32)), train=16, val=4, test=4, long_per_length=2,
                dpo_videos={"test": 3}, progress=False)
    write_needle_world(tmp_path / "n", 16, WorldSpec(), train=3, val=0, test=2, progress=False)
    digest = {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in BEFORE_ISSUE_14}
    assert digest == BEFORE_ISSUE_14
    assert json.loads((tmp_path / "w" / "world.json").read_text())["spec"]["layout"] == "quadrants"


def test_free_objects_stay_inside_the_frame_with_distinct_names():
    for size in (64, 96):
        scale = size / 64
        for scene in free_scenes(40, size):
            assert 2 <= len(scene.objects) <= 6
            assert len({o.name for o in scene.objects}) == len(scene.objects)
            for obj in scene.objects:
                assert FREE_RADIUS_PX[0] * scale <= obj.radius <= FREE_RADIUS_PX[1] * scale
                for t in range(obj.appear, obj.vanish):  # a shape reaches at most `radius` along each axis
                    x, y = obj.centre(t)
                    assert obj.radius - 1e-6 <= min(x, y) and max(x, y) <= size - obj.radius + 1e-6
    # Continuous places, not a lattice: starts spread over the frame.
    starts = np.array([o.start for s in free_scenes(60) for o in s.objects])
    assert len(np.unique(starts.round(0), axis=0)) > 0.9 * len(starts)
    assert starts.min() < 14 and starts.max() > 50


def test_free_motion_crosses_at_least_a_patch_in_every_direction_and_some_objects_appear_later():
    directions, later = set(), 0
    for scene in free_scenes(80):
        for obj in scene.objects:
            later += obj.appear > 0
            if obj.direction is None:
                continue
            directions.add(obj.direction)
            (x0, y0), (x1, y1) = obj.centre(obj.appear), obj.centre(obj.vanish - 1)
            assert math.hypot(x1 - x0, y1 - y0) >= 64 / 4 - 1e-6  # one patch of a 4 x 4 grid, 16 px
            assert (np.sign(x1 - x0), np.sign(y1 - y0)) == DIRECTIONS[obj.direction]
    assert directions == set(DIRECTIONS) and later > 0


@pytest.mark.parametrize("num_frames", [4, 8, 16])
def test_free_objects_that_appear_later_miss_at_least_the_first_quarter_of_the_clip(num_frames):
    """A late object is absent from frames [0, ceil(T/4)) and present from T/2 on: at 8 frames it is
    in neither of the first two frames, which prompt pooling's temporal kernel 2 mixes into one token."""
    appears = []
    for scene in free_scenes(40, frames=num_frames):
        _, masks = render(scene)  # (T, K, S, S): what each object shows in each frame
        for k, obj in enumerate(scene.objects):
            if obj.appear > 0:
                appears.append(obj.appear)
                assert not masks[:obj.appear, k].any() and masks[obj.appear, k].any()
    assert appears and min(appears) == -(-num_frames // 4) and max(appears) == num_frames // 2


def test_free_masks_are_what_is_visible_and_every_object_keeps_most_of_itself():
    occluded = 0
    for scene in free_scenes(40):
        frames, masks = render(scene)
        assert (masks.sum(1) <= 1).all()  # a pixel belongs to one object at most
        drawn = (frames != np.array([20, 20, 24], dtype=np.uint8)).any(-1)
        assert np.array_equal(drawn, masks.any(1))
        shares = visible_shares(scene)
        assert shares.min() >= MIN_VISIBLE
        occluded += int((shares < 1).sum())
    assert occluded > 0  # partial cover does happen, so the check above is not vacuous


def test_shifted_objects_sit_2_to_6_px_off_their_quadrant_centre_inside_the_frame():
    for seed in range(60):
        rng = np.random.default_rng(seed)
        scene = random_scene(rng, 64, 8, int(rng.integers(1, 5)), layout="shifted")
        quadrants = set()
        for obj in scene.objects:
            x, y = obj.start
            quadrants.add((x >= 32, y >= 32))
            off = math.hypot(x - (48 if x >= 32 else 16), y - (48 if y >= 32 else 16))
            assert 2 - 1e-9 <= off <= 6 + 1e-9
            for t in range(obj.appear, obj.vanish):
                cx, cy = obj.centre(t)
                assert obj.radius <= min(cx, cy) + 1e-6 and max(cx, cy) <= 64 - obj.radius + 1e-6
        assert len(quadrants) == len(scene.objects)  # still one object per quadrant at the start


def named_object(question, scene):
    """The objects the question's words name: by shape, by colour or by full name."""
    words = question.split(" options :")[0].split()
    if question.startswith("what colour is the"):
        return [o for o in scene.objects if o.shape == words[4]]
    if question.startswith("what shape is the"):
        return [o for o in scene.objects if o.colour == words[4]]
    if question.startswith("which way does the"):
        return [o for o in scene.objects if o.name == " ".join(words[4:6])]
    if question.startswith("which appears first"):
        return [o for o in scene.objects if o.name in (" ".join(words[5:7]), " ".join(words[9:11]))]
    return None


def test_every_question_of_a_free_world_names_one_object_and_answers_it(tmp_path):
    write_world(tmp_path, WorldSpec(layout="free", media_mix={"video": 0.7, "image": 0.3}), train=120, val=0,
                test=0, long_per_length=0, progress=False)
    records, tasks = json.loads((tmp_path / "train.json").read_text()), set()
    for record in records:
        scene = Scene.from_dict(record["scene"])
        question, answer = (c["value"] for c in record["conversations"])
        named = named_object(question.split("\n")[1], scene)
        if named is None:
            continue
        tasks.add(record["task"])
        expected = 2 if record["task"] == "order" else 1
        assert len(named) == expected, (record["id"], question, [o.name for o in scene.objects])
        target = next(o for o in named if (o.colour, o.shape) == (record["target"]["colour"], record["target"]["shape"]))
        assert {"colour": target.colour, "mc": target.colour, "shape": target.shape,
                "direction": target.direction, "order": f"the {target.name}"}[record["task"]] in answer
    assert tasks == {"colour", "mc", "shape", "direction", "order"}
    assert max(len(r["scene"]["objects"]) for r in records) == 6


def test_ask_refuses_a_question_whose_attribute_two_objects_share():
    scene = random_scene(np.random.default_rng(0), 64, 1, 2, layout="free")
    a, b = scene.objects
    b.shape, b.colour = a.shape, "purple" if a.colour != "purple" else "red"  # two of a's shape
    with pytest.raises(ValueError, match="colour: no object is the only one of its shape"):
        ask(np.random.default_rng(0), scene, "colour", "image")
    with pytest.raises(ValueError, match="colour: no object 0 is the only one of its shape"):
        ask(np.random.default_rng(0), scene, "colour", "image", target=0)
    assert ask(np.random.default_rng(0), scene, "shape", "image").answer == a.shape  # colours still unique
    b.colour = a.colour
    with pytest.raises(ValueError, match="share a name"):
        ask(np.random.default_rng(0), scene, "count", "image")


def test_free_needle_has_a_unique_shape_and_nothing_moves():
    for seed in range(20):
        scene = random_scene(np.random.default_rng(seed), 64, 64, 6, layout="free", needle=2)
        needle = scene.objects[0]
        assert needle.vanish - needle.appear == 2
        assert [o.shape for o in scene.objects].count(needle.shape) == 1
        assert all(o.direction is None and o.appear == 0 for o in scene.objects[1:])


def test_diagnostic_splits_have_their_own_layout_and_seeds_whatever_the_world(tmp_path):
    diagnostics = {"quadrants": 6, "shifted": 6, "free": 6}
    for layout in ("free", "quadrants"):
        counts = write_world(tmp_path / layout, WorldSpec(layout=layout, media_mix={"video": 1.0}), train=0, val=0,
                             test=6, long_per_length=0, diagnostics=diagnostics, progress=False)
        assert {f"test_{name}" for name in diagnostics} <= set(counts)
    for name in diagnostics:  # the same diagnostic split, whichever layout the world trains on
        assert (tmp_path / "free" / f"test_{name}.json").read_text() == (tmp_path / "quadrants" / f"test_{name}.json").read_text()
    read = lambda name: json.loads((tmp_path / "free" / f"{name}.json").read_text())  # noqa: E731
    starts = {name: [tuple(o["start"]) for r in read(name) for o in r["scene"]["objects"]]
              for name in ("test", "test_quadrants", "test_shifted", "test_free")}
    assert set(starts["test_quadrants"]) <= {(16.0, 16.0), (48.0, 16.0), (16.0, 48.0), (48.0, 48.0)}
    assert not set(starts["test_shifted"]) & {(16.0, 16.0), (48.0, 16.0), (16.0, 48.0), (48.0, 48.0)}
    assert starts["test_free"] != starts["test"]  # drawn from seeds of their own
    with pytest.raises(ValueError, match="diagnostics: unknown layouts \\['grid'\\]"):
        write_world(tmp_path / "x", WorldSpec(), train=1, val=0, test=0, long_per_length=0, diagnostics={"grid": 2})
    assert not (tmp_path / "x").exists()


def test_world_cli_layout_and_diagnostics(tmp_path, capsys):
    main(["--out", str(tmp_path / "w"), "--layout", "free", "--train", "2", "--val", "0", "--test", "0",
          "--long-frames", "--diagnostics", "shifted=2"])
    assert json.loads((tmp_path / "w" / "world.json").read_text())["spec"]["layout"] == "free"
    assert len(json.loads((tmp_path / "w" / "test_shifted.json").read_text())) == 2
    for argv, message in ((["--diagnostics", "grid=2"], "--diagnostics takes quadrants, shifted, free"),
                          (["--layout", "free", "--max-objects", "7"], r"max_objects must be in \[2, 6\]")):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "bad"), *argv])
        assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("overrides,match", [
    (dict(layout="grid"), "WorldSpec.layout must be one of \\('quadrants', 'shifted', 'free'\\), got 'grid'"),
    (dict(layout="free", max_objects=1), r"WorldSpec.max_objects must be in \[2, 6\] \(free layout\), got 1"),
    (dict(layout="shifted", max_objects=6), r"WorldSpec.max_objects must be in \[1, 4\]"),
])
def test_world_spec_refuses_bad_layouts(overrides, match):
    with pytest.raises(ValueError, match=match):
        WorldSpec(**overrides)
