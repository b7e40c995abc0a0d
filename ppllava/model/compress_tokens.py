"""The selection and merging modes in the model (issue #16, DESIGN.md section 5): which op each
`pooling` name runs and what it reads besides the visual tokens.

    topk      topk_select by the CLIP relevance s, computed as 'prompt' computes it, or given (an oracle)
    random    random_select; in eval each video's draw is seeded by `random_seed` and its own pixels
    merge     tome_merge; similarity: the vision tower's patch features
    dominant  dominant_merge by the tower's [CLS] attention and keys at the layer that makes the features

Each keeps exactly its budget (`TokenLayout.video_token_count`; an image crop: the image kernel's
count), outputs in time order (the ops guarantee it). A video's frames share one budget in every mode:
dominant ranks all its patches by their own frame's [CLS] attention (each frame's row sums to 1, so
the scores compare across frames as shares of attention), where VisionZip's public code compresses
each image on its own. "fastv" prunes inside the LLM, during prefill: ppllava/model/fastv.py.
"""
from __future__ import annotations

import hashlib
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from ppllava.config import visionzip_contextual
from ppllava.ops import dominant_merge, random_select, tome_merge, topk_select

PROMPT_MODES = ("prompt", "topk")  # read the CLIP relevance of the prompt (or a given map)
# Read the vision tower's [CLS] attention and keys, which the patch features (the feature cache, a chat's
# precomputed `video_features`) do not hold.
TOWER_ATTENTION_MODES = ("dominant",)


class Guide(NamedTuple):
    """What a selection or merging mode reads besides the tokens x (n, L, D), one row per sample.

    Merge's similarity is the tower's patch features (DESIGN.md allows its keys or its features): ToMe
    takes each layer's keys because it merges inside the ViT, between layers, where they are at hand;
    here merging follows the tower, and its features are what it hands over (FrameFusion, whose
    across-frames order merge follows, compares the tokens themselves too). So merge reads what `none`
    reads, and works with the feature cache and precomputed `video_features` as every pooling mode does.
    The metric is the same whichever side of the projector the merge sits (`pool_position`), as the
    relevance of 'prompt' and 'topk' is."""

    relevance: Optional[torch.Tensor] = None  # (n, T, g, g): topk
    metric: Optional[torch.Tensor] = None  # (n, L, Dv), the tower's patch features: merge
    cls_attention: Optional[torch.Tensor] = None  # (n, L): dominant
    keys: Optional[torch.Tensor] = None  # (n, L, Dk): dominant
    generators: Optional[List[torch.Generator]] = None  # random in eval, one per sample; None: torch's global RNG

    def per_crop(self, crops: int, g: int) -> "Guide":
        """One image's guide (a single sample over `crops` crops of g x g patches) as `crops` samples of
        one frame each: every crop keeps its own budget."""
        def split(t: Optional[torch.Tensor], *tail: int) -> Optional[torch.Tensor]:
            return None if t is None else t.reshape(crops, *tail)
        return Guide(split(self.relevance, 1, g, g), split(self.metric, g * g, -1), split(self.cls_attention, g * g),
                     split(self.keys, g * g, -1), self.generators)


def compress(x: torch.Tensor, grid: Tuple[int, int, int], mode: str, budget: int, guide: Guide, *,
             contextual: int = 0, check_finite: bool = True) -> torch.Tensor:
    """x (n, T*H*W, D) over `grid` -> (n, budget, D) by the selection or merging `mode`; `contextual`
    is dominant's merged share of the budget. The ops are asked for tokens only (`members=False`): the
    model never reads the (n, budget, T*H*W) weights, and the tokens are the same bit for bit."""
    if mode == "topk":
        return topk_select(x, guide.relevance, budget, check_finite=check_finite, members=False).tokens
    if mode == "random":
        if guide.generators is None:  # training: a fresh draw each step, from torch's seeded global RNG
            return random_select(x, budget, check_finite=check_finite, members=False).tokens
        return torch.cat([random_select(x[i : i + 1], budget, gen, check_finite=check_finite, members=False).tokens
                          for i, gen in enumerate(guide.generators)])
    if mode == "merge":
        return tome_merge(x, grid, budget, keys=guide.metric, check_finite=check_finite, members=False).tokens
    if mode == "dominant":
        return dominant_merge(x, guide.cls_attention, budget, contextual, keys=guide.keys,
                              check_finite=check_finite, members=False).tokens
    raise ValueError(f"no selection or merging mode {mode!r}")


def compress_crops(x: torch.Tensor, crops: int, g: int, mode: str, crop_budget: int, guide: Guide, *,
                   check_finite: bool = True) -> torch.Tensor:
    """One image's crops, x (1, crops*g*g, D) -> (1, crops*crop_budget, D): each crop compressed on its
    own to `crop_budget` tokens (dominant: VisionZip's contextual share of it)."""
    out = compress(x.reshape(crops, g * g, -1), (1, g, g), mode, crop_budget, guide.per_crop(crops, g),
                   contextual=visionzip_contextual(crop_budget), check_finite=check_finite)
    return out.reshape(1, crops * crop_budget, -1)


def pixel_generators(pixels: torch.Tensor, seed: int) -> List[torch.Generator]:
    """One CPU generator per sample of `pixels` (n, ...), seeded by `seed` and the sample's pixels.

    Why seeded by the pixels: a draw seeded per call (one generator per forward) would give a video
    other tokens in another batch position or batch size, so an evaluation's answers would hang on
    its batching; one fixed set of positions for every video would be a fixed mask, not a random
    floor. Seeded by (seed, pixels), a video keeps the same tokens in forward, generate, the chat and
    any batch, and different videos draw independently. Training draws afresh each step instead (no
    generators): like dropout, the LLM then reads a new subset of a video every epoch.

    The digest reads at most 2^16 evenly spaced pixel values of a sample (all 43 MB of a 32-frame
    336 px video would take SHA-1 about 40 ms, a quarter of its CPU prefill): a seed needs no
    identity, only that different videos draw differently."""
    generators = []
    for sample in pixels:
        flat = sample.detach().flatten()
        picked = flat[:: max(1, flat.numel() // 2 ** 16)].float().cpu()
        digest = hashlib.sha1(f"{seed} {tuple(sample.shape)}".encode(), usedforsecurity=False)
        digest.update(picked.numpy().tobytes())
        generators.append(torch.Generator().manual_seed(int.from_bytes(digest.digest()[:8], "little") >> 1))
    return generators


def tower_attention(layer: nn.Module, hidden: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The [CLS] row of a CLIP encoder `layer`'s self-attention over the patches, and its keys, from the
    layer's own projections: hidden (n, 1+N, Dv), the layer's input -> (cls_attention (n, N), keys
    (n, N, Dk)), each the mean over heads (Dk = the head width).

    As VisionZip reads them (its CLIPAttention_forward and CLIPVisionTower_VisionZip.forward): the
    attention probabilities of the [CLS] query (VisionZip sums over heads: the same ranking), and the
    k_proj keys, bias included, split into heads and averaged. Computed the way transformers' eager
    CLIPAttention does (softmax in float32), so they equal the tower's own `output_attentions`
    (tests/test_zoo_model.py); kept in float32 rather than cast back to the tower's dtype, so a bf16
    tower does not make ties of near-equal scores."""
    attn = layer.self_attn
    normed = layer.layer_norm1(hidden)
    n, length, _ = normed.shape
    heads, width = attn.num_heads, attn.head_dim
    query = attn.q_proj(normed[:, :1]).view(n, 1, heads, width).transpose(1, 2)  # (n, h, 1, hd)
    keys = attn.k_proj(normed).view(n, length, heads, width).transpose(1, 2)  # (n, h, 1+N, hd)
    scores = torch.matmul(query, keys.transpose(-1, -2)) * attn.scale  # (n, h, 1, 1+N)
    probs = scores.softmax(-1, dtype=torch.float32)
    return probs[:, :, 0, 1:].mean(1), keys.mean(1)[:, 1:]
