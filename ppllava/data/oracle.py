"""The world's ground truth as a relevance map: what a perfect CLIP alignment would give.

It separates "does prompt-guided pooling help" from "is this CLIP good enough to guide it": a
model is pooled by it at test time, or trained with it (`TrainConfig.relevance: oracle`), since a
model trained on the learned map reads tokens pooled by that map and not by another.
"""
from __future__ import annotations

import torch

from ppllava.data.clip_pairs import patch_mask
from ppllava.data.video import sample_indices


def oracle_relevance(record: dict, num_frames: int, image_size: int, patch_size: int) -> torch.Tensor:
    """(T, g, g) float32 summing to 1: uniform over the patches of the asked-about object (its
    per-frame boxes, at the frames uniform sampling reads), or uniform over the whole video when the
    question names no object (count, caption) or the object is never seen, where it reduces
    prompt-guided pooling to the plain window mean."""
    g = image_size // patch_size
    mask = torch.zeros(num_frames, g, g)
    boxes = record.get("boxes")
    if boxes:
        indices, _ = sample_indices(len(boxes), num_frames)
        for t, i in enumerate(indices):
            if boxes[i] is not None:
                mask[t] = patch_mask(boxes[i], image_size, patch_size).float()
    if mask.sum() == 0:
        mask.fill_(1.0)
    return mask / mask.sum()
