"""CLIP visual-prompt alignment (DESIGN.md §2, "Alignment")."""
from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn.functional as F

from ppllava.ops.checks import check_finite as _check_finite


def prompt_relevance(
    patch_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: Union[float, torch.Tensor],
    *,
    check_finite: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Relevance of every visual patch to the prompt, in CLIP's joint space.

    Args:
        patch_embeds (`torch.FloatTensor` of shape `(B, T, H, W, Dc)`): patches after the vision
            tower's post-layernorm and visual projection.
        text_embeds (`torch.FloatTensor` of shape `(B, Dc)`): the prompt's pooled (EOS) text
            embedding after the text projection.
        logit_scale: CLIP's stored log-scale; tau = exp(logit_scale) (100 for OpenAI CLIP).
        check_finite: raise a ValueError naming the input that holds NaN or Inf (a NaN would
            otherwise spread through the softmax to the whole map).

    Returns:
        (r, s), both `torch.FloatTensor` of shape `(B, T, H, W)` in float32 whatever the input dtype:
        r = cosine relevance in [-1, 1]; s = softmax over all T*H*W positions of tau * r.
    """
    if patch_embeds.ndim != 5:
        raise ValueError(f"patch_embeds must have shape (B, T, H, W, Dc), got {tuple(patch_embeds.shape)}")
    if text_embeds.ndim != 2:
        raise ValueError(f"text_embeds must have shape (B, Dc), got {tuple(text_embeds.shape)}")
    if patch_embeds.shape[0] != text_embeds.shape[0] or patch_embeds.shape[-1] != text_embeds.shape[-1]:
        raise ValueError(
            f"patch_embeds {tuple(patch_embeds.shape)} and text_embeds {tuple(text_embeds.shape)} "
            "must agree on batch B and embedding size Dc"
        )
    if check_finite:
        _check_finite(patch_embeds, "patch_embeds")
        _check_finite(text_embeds, "text_embeds")
        _check_finite(torch.as_tensor(logit_scale), "logit_scale")
    dtype = torch.promote_types(patch_embeds.dtype, torch.float32)
    e = F.normalize(patch_embeds.to(dtype), dim=-1)
    c = F.normalize(text_embeds.to(dtype), dim=-1)
    r = torch.einsum("bthwc,bc->bthw", e, c)
    return r, relevance_softmax(r, logit_scale)


def relevance_softmax(r: torch.Tensor, logit_scale: Union[float, torch.Tensor]) -> torch.Tensor:
    """s = softmax over all T*H*W positions of tau * r, tau = exp(logit_scale): (B, T, H, W) -> (B, T, H, W),
    in r's dtype. Split out so an encoder that gets r a chunk of frames at a time normalises once."""
    tau = torch.as_tensor(logit_scale, dtype=r.dtype, device=r.device).exp()
    return torch.softmax(tau * r.flatten(1), dim=-1).view_as(r)
