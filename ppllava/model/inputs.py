"""Batch checks at the model's public entry points (forward, generate, embed_inputs, video_tokens,
relevance_maps): a malformed batch stops before any compute, with the argument's name, the
shape expected and the shape given."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ppllava.ops import check_finite


def _shape(t) -> tuple:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def check_input_ids(input_ids) -> int:
    """(B, L) token ids with B, L >= 1; returns B."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or 0 in input_ids.shape:
        raise ValueError(f"input_ids must have shape (B, L) with B >= 1 samples and L >= 1 tokens, got {_shape(input_ids)}")
    return input_ids.shape[0]


def check_pixels(pixels, name: str, size: int, second: str) -> None:
    """(n, `second`, 3, size, size) pixels with n >= 1: videos (second = T) or image crops."""
    expected = f"(n, {second}, 3, {size}, {size})"
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 5:
        raise ValueError(f"{name} must have shape {expected}, got {_shape(pixels)}")
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(pixels.shape)}, expected {expected} with n, {second} >= 1")
    if tuple(pixels.shape[2:]) != (3, size, size):
        raise ValueError(f"{name} must have shape {expected} (3 colour channels, {size} px square), "
                         f"got {tuple(pixels.shape)}")


def check_clip_input_ids(clip_input_ids, rows: int, what: str) -> None:
    """One CLIP prompt per sample (or per video): (rows, L)."""
    if not isinstance(clip_input_ids, torch.Tensor) or clip_input_ids.ndim != 2:
        raise ValueError(f"clip_input_ids must have shape ({what}, L), got {_shape(clip_input_ids)}")
    if clip_input_ids.shape[0] != rows:
        raise ValueError(f"clip_input_ids has {clip_input_ids.shape[0]} prompt(s) for {rows} {what}: "
                         f"one CLIP prompt each, shape ({rows}, L); got {tuple(clip_input_ids.shape)}")


def check_relevance(relevance, videos: int, frames: int, grid: int, finite: bool) -> None:
    """A given relevance map (an oracle): (n, T, g, g), one per video, finite (if `finite`)."""
    expected = (videos, frames, grid, grid)
    if not isinstance(relevance, torch.Tensor) or tuple(relevance.shape) != expected:
        raise ValueError(f"video_relevance must have shape (n, T, g, g) = {expected}, got {_shape(relevance)}")
    if finite:
        check_finite(relevance, "video_relevance")


def check_images(pixel_values: torch.Tensor, image_sizes, image_crops: Optional[Sequence[int]], size: int) -> None:
    """Images in LLaVA-NeXT's layout: (n, max_crops, 3, S, S) with n sizes and n crop counts."""
    check_pixels(pixel_values, "pixel_values", size, "max_crops")
    n, most = pixel_values.shape[:2]
    if image_sizes is None or len(image_sizes) != n:
        got = "none" if image_sizes is None else len(image_sizes)
        raise ValueError(f"pixel_values hold {n} image(s) but image_sizes gives {got}: one (H, W) per image")
    if image_crops is not None:
        crops = list(image_crops)
        if len(crops) != n:
            raise ValueError(f"pixel_values hold {n} image(s) but image_crops gives {len(crops)}: one count per image")
        bad = [i for i, c in enumerate(crops) if not 1 <= int(c) <= most]
        if bad:
            raise ValueError(f"image_crops of image(s) {bad} = {[crops[i] for i in bad]} must be in [1, {most}] "
                             f"(pixel_values has {most} crop slots per image)")
