"""LLaVA-NeXT "any resolution" image layout: a base crop plus a grid of crops stitched into
one feature map, unpadded to the image's aspect ratio, with a newline token ending each row.

The geometry comes from transformers' own LLaVA-NeXT helpers, so token counts and order match
`LlavaNextForConditionalGeneration` exactly; what is ours is that each crop's feature map may
be pooled (g x g per crop instead of the tower's 24 x 24).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)


def _size(image_size) -> Tuple[int, int]:
    if isinstance(image_size, torch.Tensor):
        image_size = image_size.tolist()
    height, width = (int(v) for v in image_size)
    return height, width


def crop_count(image_size, pinpoints: Sequence[Sequence[int]], crop_size: int) -> int:
    """Crops LLaVA-NeXT cuts an image of `image_size` (H, W) into: the base crop plus the grid."""
    return image_size_to_num_patches(_size(image_size), [list(p) for p in pinpoints], crop_size)


def _grid_shape(image_size, pinpoints, crop_size) -> Tuple[int, int]:
    return get_anyres_image_grid_shape(_size(image_size), [list(p) for p in pinpoints], crop_size)


def image_token_count(image_size, num_crops: int, grid: int, pinpoints, crop_size: int) -> int:
    """Visual tokens of one image whose crops each give a grid x grid feature map."""
    if num_crops == 1:
        return grid * grid + 1  # the base crop and one newline
    rows, cols = _grid_shape(image_size, pinpoints, crop_size)
    stitched = unpad_image(torch.empty(1, rows * grid, cols * grid, device="meta"), _size(image_size))
    return grid * grid + stitched.shape[1] * (stitched.shape[2] + 1)


def pack_image_tokens(crops: torch.Tensor, grid: int, image_size, pinpoints, crop_size: int,
                      newline: torch.Tensor) -> torch.Tensor:
    """Lay out one image's crop features as LLaVA-NeXT does.

    Args:
        crops (`torch.FloatTensor` of shape `(num_crops, grid * grid, D)`): base crop first.
        newline (`torch.FloatTensor` of shape `(D,)`).

    Returns:
        `torch.FloatTensor` of shape `(image_token_count(...), D)`.
    """
    newline = newline.to(crops.dtype)
    if crops.shape[0] == 1:
        return torch.cat([crops[0], newline[None]], dim=0)
    rows, cols = _grid_shape(image_size, pinpoints, crop_size)
    if crops.shape[0] - 1 != rows * cols:
        raise ValueError(
            f"image of size {tuple(_size(image_size))} needs 1 + {rows} x {cols} crops, got {crops.shape[0]}"
        )
    base, rest = crops[0], crops[1:]
    stitched = rest.view(rows, cols, grid, grid, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
    stitched = unpad_image(stitched, _size(image_size))  # (D, rows', cols')
    with_newlines = torch.cat([stitched, newline[:, None, None].expand(*stitched.shape[:-1], 1)], dim=-1)
    return torch.cat([base, with_newlines.flatten(1, 2).transpose(0, 1)], dim=0)
