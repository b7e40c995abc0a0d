"""The world's ground truth on the patch grid: object coverage redrawn from a record's scene, the
patches that hold the object (pointing's hits), and the oracle relevance map."""
import pytest
import torch

from ppllava.data.oracle import object_coverage, object_patches, oracle_relevance, shown_patches
from ppllava.data.scenes import Scene, SceneObject, boxes, render


def record_of(scene: Scene, target: int = 0) -> dict:
    obj = scene.objects[target]
    _, masks = render(scene)
    return {"id": "r0", "frames": scene.num_frames, "target": {"colour": obj.colour, "shape": obj.shape},
            "boxes": [row[target] for row in boxes(masks)], "scene": scene.to_dict()}


def triangle_scene(frames: int = 1, appear: int = 0, vanish: int = 1) -> Scene:
    # A triangle centred on the top-left 2 x 2 patch cell of a 64 px frame with 16 px patches: its box
    # is [7.3, 6, 24.7, 21], which holds the centre (24) of no patch of the lower row.
    return Scene(64, frames, [SceneObject("triangle", "red", 10.0, (16.0, 16.0), (0.0, 0.0), appear, vanish),
                              SceneObject("circle", "blue", 12.0, (48.0, 48.0), (0.0, 0.0), 0, frames)])


def test_scene_round_trips_through_its_dict():
    scene = triangle_scene(4, 1, 3)
    assert Scene.from_dict(scene.to_dict()) == scene


def test_coverage_counts_the_pixels_a_box_centre_rule_missed():
    coverage = object_coverage(record_of(triangle_scene()), [0], 64, 16)[0]
    assert coverage.shape == (4, 4)
    # The lower row holds more of the triangle than the upper one (its base), and nothing outside the cell.
    assert coverage[1, :2].sum() > coverage[0, :2].sum() > 0
    assert float(coverage[2:].sum() + coverage[:, 2:].sum()) == 0
    assert torch.equal(object_patches(coverage), torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]).bool())
    # Shares of a 16 px patch's 256 pixels: together, every pixel the triangle was drawn with.
    assert float(coverage.sum()) * 256 == pytest.approx(float(render(triangle_scene())[1][0, 0].sum()))


def test_object_patches_leave_out_a_patch_the_object_only_grazes():
    coverage = torch.zeros(2, 4, 4)
    coverage[0, 0, 0], coverage[0, 0, 1], coverage[0, 1, 1] = 0.4, 0.2, 0.05
    held = object_patches(coverage)
    assert held[0].sum() == 2 and held[0, 0, 0] and held[0, 0, 1] and not held[0, 1, 1]
    assert held[1].sum() == 0  # unseen in that frame: no patch holds it


def test_oracle_relevance_follows_the_coverage_or_falls_back_to_uniform():
    record = record_of(triangle_scene(4, 1, 3))
    r = oracle_relevance(record, 4, 64, 16)
    assert r.shape == (4, 4, 4) and float(r.sum()) == pytest.approx(1.0)
    assert float(r[0].sum()) == 0 and float(r[3].sum()) == 0 and float(r[1].sum()) == pytest.approx(0.5)
    seen = object_coverage(record, [1], 64, 16)[0]
    assert torch.allclose(r[1] / r[1].sum(), seen / seen.sum())
    no_target = {**record, "target": None}
    assert torch.allclose(oracle_relevance(no_target, 2, 64, 16), torch.full((2, 4, 4), 1 / 32))


def test_a_record_without_its_scene_is_a_clear_error():
    record = record_of(triangle_scene())
    del record["scene"]
    with pytest.raises(ValueError, match="r0.*scene"):
        oracle_relevance(record, 1, 64, 16)
    with pytest.raises(ValueError, match="frames \\[5\\]"):
        object_coverage(record_of(triangle_scene()), [5], 64, 16)


def test_coverage_of_an_occluded_object_leaves_out_its_occluder():
    # A red circle under a blue square drawn after it, both across the centre of a 64 px frame.
    scene = Scene(64, 1, [SceneObject("circle", "red", 14.0, (26.0, 30.0), (0.0, 0.0), 0, 1),
                          SceneObject("square", "blue", 12.0, (38.0, 34.0), (0.0, 0.0), 0, 1)])
    _, masks = render(scene)
    _, alone = render(Scene(64, 1, scene.objects[:1]))
    under, over = masks[0, 0], masks[0, 1]
    assert not (under & over).any() and 0 < under.sum() < alone[0, 0].sum()
    assert (alone[0, 0] & over).sum() == alone[0, 0].sum() - under.sum()  # what it lost is the square's
    coverage = object_coverage(record_of(scene, 0), [0], 64, 16)[0]
    assert float(coverage.sum()) * 256 == pytest.approx(float(under.sum()))
    # The square hides all of the circle's corner in the patch at rows/cols 32-47: none of it counts there.
    assert alone[0, 0, 32:48, 32:48].sum() > 0 and float(coverage[2, 2]) == 0
    relevance = oracle_relevance(record_of(scene, 0), 1, 64, 16)[0]
    assert int(relevance.argmax()) in object_patches(coverage).flatten().nonzero().flatten().tolist()


def test_shown_patches_count_a_star_tip_and_give_a_shared_patch_to_the_larger_share():
    # A star across many 8 px patches, a blue square beside it sharing one column of patches, an
    # empty corner: shown_patches keeps the star's thin tips (object_patches does not) and gives each
    # shared patch to whichever object covers more of it.
    scene = Scene(64, 1, [SceneObject("star", "red", 16.0, (24.0, 24.0), (0.0, 0.0), 0, 1),
                          SceneObject("square", "blue", 8.0, (44.0, 24.0), (0.0, 0.0), 0, 1)])
    star, square = record_of(scene, 0), record_of(scene, 1)
    shown_star, shown_square = shown_patches(star, [0], 64, 8)[0], shown_patches(square, [0], 64, 8)[0]
    coverage_star, coverage_square = object_coverage(star, [0], 64, 8)[0], object_coverage(square, [0], 64, 8)[0]
    held = object_patches(coverage_star)
    lost = held & ~shown_star  # a patch the star holds is shown as the star unless the square covers more
    assert (coverage_square[lost] > coverage_star[lost]).all()
    tips = shown_star & ~held
    assert tips.any() and (coverage_star[tips] < 0.5 * coverage_star.max()).all()
    assert not (shown_star & shown_square).any()  # no patch is both objects'
    both = (coverage_star > 0) & (coverage_square > 0)
    assert both.any()
    assert torch.equal(shown_square[both], coverage_square[both] >= coverage_star[both])
    assert not shown_star[coverage_star == 0].any()  # background alone is no object's


def test_shown_patches_of_an_unseen_object_are_none_and_bad_frames_are_named():
    scene = triangle_scene(frames=3, appear=1, vanish=2)
    shown = shown_patches(record_of(scene), [0, 1, 2], 64, 16)
    assert shown[0].sum() == 0 and shown[1].sum() > 0 and shown[2].sum() == 0
    with pytest.raises(ValueError, match=r"record r0: frames \[5\] outside its 3-frame scene"):
        shown_patches(record_of(scene), [5], 64, 16)
