"""The order and count needles of issue #15: brief appearances drawn apart, questions whose answers
the rendered frames confirm, the oracle covering every object a question names, mixed needle worlds
and their bad inputs."""
import json
import re

import numpy as np
import pytest
import torch

from ppllava.data.oracle import object_coverage, oracle_relevance
from ppllava.data.scenes import NEEDLE_GAP, Scene, needle_spans, random_scene, render
from ppllava.data.world import WorldSpec, write_needle_world


def runs_of(seen) -> list:
    """[(first, last + 1), ...]: the maximal runs of True in a 1-D bool sequence."""
    runs, start = [], None
    for t, on in enumerate(list(seen) + [False]):
        if on and start is None:
            start = t
        elif not on and start is not None:
            runs.append((start, t))
            start = None
    return runs


@pytest.mark.parametrize("count", [1, 2, 3])
def test_needle_spans_are_in_order_apart_and_reach_every_placement(count):
    frames, needle = 12, 2
    firsts, lasts = set(), set()
    for seed in range(400):
        spans = needle_spans(np.random.default_rng(seed), frames, needle, count)
        assert len(spans) == count and all(b - a == needle for a, b in spans)
        assert spans[0][0] >= 0 and spans[-1][1] <= frames
        assert all(later[0] - earlier[1] >= NEEDLE_GAP for earlier, later in zip(spans, spans[1:]))
        firsts.add(spans[0][0])
        lasts.add(spans[-1][0])
    latest_first = frames - count * needle - (count - 1) * NEEDLE_GAP
    assert firsts == set(range(latest_first + 1))  # from frame 0 to the last start that leaves room for the rest
    assert max(lasts) == frames - needle


def test_needle_spans_that_cannot_fit_are_refused():
    assert needle_spans(np.random.default_rng(0), 8, 2, 3) == [(0, 2), (3, 5), (6, 8)]  # exactly fits
    with pytest.raises(ValueError, match="do not fit in 7 frames"):
        needle_spans(np.random.default_rng(0), 7, 2, 3)


@pytest.mark.parametrize("layout", ["quadrants", "free"])
def test_order_and_count_answers_are_what_the_rendered_frames_show(tmp_path, layout):
    write_needle_world(tmp_path, 16, WorldSpec(layout=layout), train=0, val=0, test=24, tasks=("order", "count"),
                       progress=False)
    records = json.loads((tmp_path / "test.json").read_text())
    assert [r["task"] for r in records] == ["needle_order", "needle_count"] * 12
    answers = set()
    for r in records:
        scene = Scene.from_dict(r["scene"])
        _, masks = render(scene)  # (T, K, S, S): what each object shows
        shown = masks.any((2, 3))  # (T, K)
        assert all(o.velocity == (0.0, 0.0) for o in scene.objects)  # a needle video: nothing moves
        question, answer = r["conversations"][0]["value"].removeprefix("<video>\n"), r["conversations"][1]["value"]
        if r["task"] == "needle_order":
            a, b = scene.objects[:2]
            assert a.name != b.name and f"the {a.name}" in question and f"the {b.name}" in question
            first_seen = [int(np.flatnonzero(shown[:, k])[0]) for k in (0, 1)]
            assert answer == f"the {scene.objects[int(np.argmin(first_seen))].name}"
            assert r["needle_frames"] == sorted(np.flatnonzero(shown[:, :2].any(1)).tolist())
        else:
            name = r["target"]["colour"] + " " + r["target"]["shape"]
            assert question == f"how many times does the {name} appear ?"
            same = [k for k, o in enumerate(scene.objects) if o.name == name]
            appearances = runs_of(shown[:, same].any(1))
            assert answer == ["one", "two", "three"][len(appearances) - 1]
            assert sum(b - a for a, b in appearances) == len(r["needle_frames"])
            others = [o.name for k, o in enumerate(scene.objects) if k not in same]
            assert len(set(others)) == len(others) and all(o.appear == 0 for k, o in enumerate(scene.objects)
                                                            if k not in same)
        answers.add((r["task"], answer))
    assert {a for t, a in answers if t == "needle_count"} == {"one", "two", "three"}


def test_the_oracle_covers_every_object_a_needle_question_names(tmp_path):
    write_needle_world(tmp_path, 16, WorldSpec(), train=0, val=0, test=6, tasks=("recall", "order", "count"),
                       progress=False)
    for r in json.loads((tmp_path / "test.json").read_text()):
        relevance = oracle_relevance(r, 16, 64, 16)  # (T, g, g)
        assert [t for t in range(16) if relevance[t].sum() > 0] == r["needle_frames"]
        coverage = object_coverage(r, r["needle_frames"], 64, 16)
        assert all(float(frame.sum()) > 0 for frame in coverage)
    # An order needle names two objects: the map splits between them, neither left out.
    order = json.loads((tmp_path / "test.json").read_text())[1]
    scene = Scene.from_dict(order["scene"])
    for k in (0, 1):
        t = scene.objects[k].appear
        alone = {**order, "named": []} if k == 0 else {**order, "target": order["named"][1], "named": []}
        assert torch.allclose(object_coverage(order, [t], 64, 16), object_coverage(alone, [t], 64, 16))


def test_a_mixed_needle_test_split_keeps_its_recall_videos_depth_balanced(tmp_path):
    write_needle_world(tmp_path, 16, WorldSpec(), train=0, val=0, test=30, test_depth_bins=5,
                       tasks=("recall", "order", "count"), progress=False)
    records = json.loads((tmp_path / "test.json").read_text())
    recall = [r for r in records if r["task"] == "needle"]
    assert len(recall) == 10
    assert sorted(min(4, 5 * r["needle_frames"][0] // 16) for r in recall) == [b for b in range(5) for _ in range(2)]


def test_a_recall_only_needle_world_is_the_one_written_before_tasks(tmp_path):
    write_needle_world(tmp_path / "a", 16, WorldSpec(), train=4, val=0, test=5, test_depth_bins=5, progress=False)
    write_needle_world(tmp_path / "b", 16, WorldSpec(), train=4, val=0, test=5, test_depth_bins=5,
                       tasks=("recall",), progress=False)
    for split in ("train", "test"):
        assert (tmp_path / "a" / f"{split}.json").read_text() == (tmp_path / "b" / f"{split}.json").read_text()


@pytest.mark.parametrize("tasks, match", [(("recall", "where"), "needle tasks"), ((), "needle tasks"),
                                          ("order", "give a list")])
def test_an_unknown_needle_task_is_refused_before_anything_is_written(tmp_path, tasks, match):
    with pytest.raises(ValueError, match=match):
        write_needle_world(tmp_path / "n", 16, train=2, val=0, test=0, tasks=tasks, progress=False)
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize("most, tasks, short", [(1, ("recall",), "{'recall': 2}"), (2, ("recall", "order"), "{'order': 3}"),
                                                (3, ("count", "order", "count"), "{'count': 4}")])
def test_too_few_objects_for_a_needle_task_are_refused_before_anything_is_written(tmp_path, most, tasks, short):
    # Before this check numpy stopped the first such scene with "low >= high", a directory half written.
    with pytest.raises(ValueError, match=rf"max_objects = {most} is too few for needle task\(s\) {re.escape(short)}"):
        write_needle_world(tmp_path / "n", 16, WorldSpec(max_objects=most), train=6, val=0, test=0, tasks=tasks,
                           progress=False)
    assert not (tmp_path / "n").exists()
    write_needle_world(tmp_path / "ok", 16, WorldSpec(max_objects=most + 1), train=3, val=0, test=0, tasks=tasks,
                       progress=False)  # one more object is enough


def test_brief_spans_that_do_not_fit_the_scene_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="not both"):
        random_scene(rng, 64, 16, 3, needle=2, spans=[(0, 2)])
    with pytest.raises(ValueError, match="at least one object stays"):
        random_scene(rng, 64, 16, 2, spans=[(0, 2), (4, 6)])
    with pytest.raises(ValueError, match=r"\(14, 18\) is not a span"):
        random_scene(rng, 64, 16, 3, spans=[(14, 18)])
    with pytest.raises(ValueError, match="repeat_first needs"):
        random_scene(rng, 64, 16, 3, repeat_first=True)


def test_the_count_question_is_in_the_vocabulary_after_every_earlier_word():
    from ppllava.data.tokenizer import build_world_tokenizer

    tokenizer = build_world_tokenizer()
    ids = tokenizer("how many times does the red square appear ?", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    vocab = tokenizer.get_vocab()
    assert vocab["six"] == 95 and vocab["times"] == 96 and vocab["appear"] == 97  # appended: no saved model's ids move
