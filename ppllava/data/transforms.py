"""The parts `PPLLaVAProcessor` is built from: the vision tower's own transforms (CLIP's for video
frames, LLaVA-NeXT's any-resolution crops for images) and the padding and stacking of a batch."""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from ppllava.config import PPLLaVAConfig
from ppllava.data.conversation import IGNORE


class MediaTokenError(ValueError):
    """Media that cannot be laid out as visual tokens: placeholders that do not match the media
    given, or a video the configured pooling does not cover."""


class ProcessedImage(NamedTuple):
    """An image after the vision tower's transforms: what `LLaVADataset` caches and `__call__` takes."""
    pixels: torch.Tensor  # (crops, 3, S, S), base crop first
    size: List[int]  # [H, W] of the original picture
    crops: int  # crops used: 1 in the single-crop layout


class MediaProcessor:
    """The vision tower's transforms: CLIP's for video frames, LLaVA-NeXT's any-resolution crops for
    images (single crop for the images of a multi-image set).

    Pixels are (..., H, W, 3) and the processors are told so: left to guess, they read a picture 1, 3
    or 4 pixels tall as channels-first (a red picture came out grey, with its size swapped)."""

    def __init__(self, config: PPLLaVAConfig):
        from transformers import CLIPImageProcessor, LlavaNextImageProcessor

        size = {"shortest_edge": config.image_size}
        crop = {"height": config.image_size, "width": config.image_size}
        self.frames = CLIPImageProcessor(size=size, crop_size=crop)
        self.images = LlavaNextImageProcessor(size=size, crop_size=crop,
                                              image_grid_pinpoints=[list(p) for p in config.image_grid_pinpoints])

    def video(self, frames: np.ndarray) -> torch.Tensor:
        """frames (`np.ndarray` uint8 of shape `(T, H, W, 3)`) -> pixels (`torch.FloatTensor` of shape `(T, 3, S, S)`)."""
        check_rgb(frames, 4, "video frames", "(T, H, W, 3)")
        return self.frames(list(frames), return_tensors="pt", input_data_format="channels_last")["pixel_values"]

    def image(self, image: np.ndarray, single_crop: bool = False):
        """image (`np.ndarray` uint8 of shape `(H, W, 3)`) -> (pixels (`torch.FloatTensor` of shape
        `(crops, 3, S, S)`), [H, W], crops); one crop, the whole picture resized, with `single_crop`."""
        check_rgb(image, 3, "image", "(H, W, 3)")
        out = self.images([image], return_tensors="pt", input_data_format="channels_last")
        pixels, size = out["pixel_values"][0], out["image_sizes"][0].tolist()
        return (pixels[:1], size, 1) if single_crop else (pixels, size, pixels.shape[0])


def check_rgb(pixels: np.ndarray, ndim: int, what: str, layout: str) -> None:
    if pixels.ndim != ndim or pixels.shape[-1] != 3 or pixels.dtype != np.uint8 or 0 in pixels.shape:
        raise ValueError(f"{what} must be uint8 RGB {layout}, got {pixels.dtype} of shape {tuple(pixels.shape)}")


# --- batching, shared with the dataset's Collator ---------------------------------------------------
def pad_ids(rows: Sequence[Sequence[int]], pad_id: int, side: str,
            labels: Optional[Sequence[Sequence[int]]] = None) -> Dict[str, torch.Tensor]:
    """Token rows padded to the longest: input_ids, attention_mask (and labels, padded with -100)."""
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    out_labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    for i, row in enumerate(rows):
        where = slice(length - len(row), length) if side == "left" else slice(0, len(row))
        ids[i, where], mask[i, where] = torch.tensor(list(row), dtype=torch.long), 1
        if labels is not None:
            out_labels[i, where] = torch.tensor(list(labels[i]), dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask}
    return {**out, "labels": out_labels} if labels is not None else out


def stack_videos(videos: Sequence[torch.Tensor]) -> torch.Tensor:
    """(T, 3, S, S) videos -> (n, T, 3, S, S); one frame count per batch."""
    if len({v.shape for v in videos}) > 1:
        raise ValueError(f"videos of different shapes in one batch: {sorted({tuple(v.shape) for v in videos})}")
    return torch.stack(list(videos))


def stack_images(images: Sequence[ProcessedImage]) -> Dict[str, object]:
    """Images in LLaVA-NeXT's layout: pixel_values (n, max_crops, 3, S, S), zero crops after each
    image's own; image_sizes [[H, W], ...]; image_crops [c, ...]."""
    most = max(im.pixels.shape[0] for im in images)
    pixels = [torch.cat([p, p.new_zeros(most - p.shape[0], *p.shape[1:])]) for p, _, _ in images]
    return {"pixel_values": torch.stack(pixels), "image_sizes": [list(im.size) for im in images],
            "image_crops": [int(im.crops) for im in images]}


def expand_labels(ids: Sequence[int], labels: Sequence[int], expanded: Sequence[int], media_ids) -> List[int]:
    """Labels aligned with `expanded` (the ids with placeholders expanded): -100 on every visual token."""
    out, j = [], 0
    for token, label in zip(ids, labels):
        if token in media_ids:
            while j < len(expanded) and expanded[j] == token:
                out.append(IGNORE)
                j += 1
        else:
            out.append(label)
            j += 1
    return out
