"""The world's ground truth on the patch grid: which patches hold the asked-about object, and the
relevance map a perfect CLIP alignment would give.

It separates "does prompt-guided pooling help" from "is this CLIP good enough to guide it": a
model is pooled by `oracle_relevance` at test time, or trained with it (`TrainConfig.relevance:
oracle`), since a model trained on the learned map reads tokens pooled by that map and not by another.

Both come from the object's visible pixels, redrawn from the scene each world record carries, not
from its bounding box: a triangle's box ends at its base, so "patches whose centre lies in the box"
left out the row of patches holding most of the triangle (56 % of its pixels).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from ppllava.data.scenes import Scene, render
from ppllava.data.video import sample_indices

# A patch "holds" the object when the object covers at least this share of the patch, relative to
# the patch it covers most in that frame: scale-free, so a 10 px triangle in a 16 px patch counts.
HOLDS_SHARE = 0.5


def _named_indices(record: dict) -> Tuple[Scene, List[int]]:
    """(scene, ks): the record's scene and the indices of the objects its question names, the asked-about
    object first; then every other object of its name (a count needle's appearances) or listed in the
    record's "named" (an order needle's two). A ValueError names the record at fault."""
    target, data = record.get("target"), record.get("scene")
    if not target:
        raise ValueError(f"record {record.get('id')}: names no object (no 'target'), so it has no object coverage")
    if data is None:
        raise ValueError(f"record {record.get('id')}: no 'scene' to redraw the object from; worlds written before "
                         "records carried their scene must be rewritten (python -m ppllava.data.world)")
    scene = Scene.from_dict(data)
    names = [(o.colour, o.shape) for o in scene.objects]
    keys = [(t["colour"], t["shape"]) for t in [target, *record.get("named", [])]]
    missing = [key for key in keys if key not in names]
    if missing:
        raise ValueError(f"record {record.get('id')}: named objects {missing} are not among its scene's objects {names}")
    first = names.index(keys[0])
    return scene, [first] + [k for k, name in enumerate(names) if name in keys and k != first]


def _coverage(record: dict, frames: Sequence[int], image_size: int, patch_size: int) -> Tuple[torch.Tensor, List[int]]:
    """scene_coverage, with the indices of every object the record names (`_named_indices`)."""
    scene, ks = _named_indices(record)
    _check_frames(record, scene, frames)
    g = image_size // patch_size
    coverage = torch.zeros(len(frames), len(scene.objects), g, g)
    seen = [i for i, t in enumerate(frames) if any(scene.objects[k].visible(t) for k in ks)]
    if seen:
        _, masks = render(scene, [frames[i] for i in seen])  # (T', K, S, S) bool, only what each object shows
        coverage[seen] = F.adaptive_avg_pool2d(torch.from_numpy(masks).float(), g)
    return coverage, ks


def _check_frames(record: dict, scene: Scene, frames: Sequence[int]) -> None:
    bad = [t for t in frames if not 0 <= t < scene.num_frames]
    if bad:
        raise ValueError(f"record {record.get('id')}: frames {bad} outside its {scene.num_frames}-frame scene")


def scene_coverage(record: dict, frames: Sequence[int], image_size: int, patch_size: int) -> Tuple[torch.Tensor, int]:
    """((T, K, g, g) float32 in [0, 1], k): the share of each patch every object's visible pixels cover
    at the record's frames `frames`, and the index k of the asked-about object. Frames where no object
    the question names is seen are not drawn (a needle is in 1-2 of 256) and stay zero. g = image_size
    // patch_size; the world's frames are square, so the share does not depend on the resize."""
    coverage, ks = _coverage(record, frames, image_size, patch_size)
    return coverage, ks[0]


def object_coverage(record: dict, frames: Sequence[int], image_size: int, patch_size: int) -> torch.Tensor:
    """(T, g, g) float32 in [0, 1]: the share of each patch the visible pixels of the objects the
    question names cover (the asked-about object; an order needle's two, a count needle's every
    appearance), at the record's frames `frames` (zero where none is seen); see scene_coverage."""
    coverage, ks = _coverage(record, frames, image_size, patch_size)
    return coverage[:, ks].sum(1)  # each pixel has one owner (render's masks), so the shares add up to at most 1


def shown_patches(record: dict, frames: Sequence[int], image_size: int, patch_size: int) -> torch.Tensor:
    """(T, g, g) bool: the patches that show the asked-about object more than any other object,
    i.e. it covers some of the patch and no other object covers more (background is no object).

    The object-level reading of pointing: a map whose top patch lies here points at the asked-about
    object and not at another. It counts the tip of a star, a patch the star covers a third of, as
    the star, where `object_patches` (at least half the coverage of the best patch) does not."""
    return shows_most(*scene_coverage(record, frames, image_size, patch_size))


def shows_most(coverage: torch.Tensor, k: int) -> torch.Tensor:
    """(T, K, g, g) coverage of every object, k -> (T, g, g) bool: shown_patches from scene_coverage."""
    target = coverage[:, k]
    return (target > 0) & (target >= coverage.amax(1))


def object_patches(coverage: torch.Tensor) -> torch.Tensor:
    """(..., g, g) coverage -> bool of the same shape: the patches holding the object, i.e. covered
    at least HOLDS_SHARE as much as the frame's most covered patch (none where it is unseen)."""
    best = coverage.flatten(-2).amax(-1)[..., None, None]
    return (coverage > 0) & (coverage >= HOLDS_SHARE * best)


def sampled_coverage(record: dict, num_frames: int, image_size: int, patch_size: int) -> torch.Tensor:
    """object_coverage at the `num_frames` frames uniform sampling reads from the record's video."""
    total = int(record.get("frames") or len(record["boxes"]))
    indices, _ = sample_indices(total, num_frames)
    return object_coverage(record, indices, image_size, patch_size)


def oracle_relevance(record: dict, num_frames: int, image_size: int, patch_size: int) -> torch.Tensor:
    """(T, g, g) float32 summing to 1: proportional to how much of each patch the asked-about object
    covers (at the frames uniform sampling reads), or uniform over the whole video when the question
    names no object (count, caption) or the object is never seen, where it reduces prompt-guided
    pooling to the plain window mean."""
    g = image_size // patch_size
    if record.get("target"):
        mask = sampled_coverage(record, num_frames, image_size, patch_size)
    else:
        mask = torch.zeros(num_frames, g, g)
    if mask.sum() == 0:
        mask = torch.ones(num_frames, g, g)
    return mask / mask.sum()
