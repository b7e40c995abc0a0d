"""Token merging, across neighbouring frames first (issue #16): ToMe's bipartite soft matching
(Bolya et al., ICLR 2023) scheduled the way FrameFusion (Fu et al., 2024) orders its merges.

Returns the `Compressed` contract of `ppllava/ops/compression.py`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ppllava.ops.compression import Compressed, _check_budget, _check_keys, _check_x, _compress
from ppllava.ops.pooling import _check_tokens


def tome_merge(x: torch.Tensor, grid, budget: int, *, keys: Optional[torch.Tensor] = None,
               check_finite: bool = True, members: bool = True) -> Compressed:
    """Merge the most similar tokens by bipartite soft matching until exactly `budget` remain,
    pairs of neighbouring frames first.

    ToMe (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023, tome/merge.py) splits the
    tokens into sets A and B, matches every A token to its most similar B token (cosine of the
    metric), and merges the r best-matched pairs by size-weighted average (merge_wavg), sizes
    added. FrameFusion (Fu et al., "FrameFusion: Combining Similarity and Importance for Video
    Token Reduction", 2024) merges a token into the same patch of the next frame first. Here:

    Schedule, one round = one matching:
      1. Across frames while the tokens span more than one frame group. Groups start as the T
         frames; in a round, group 2k is set A and group 2k+1 set B of pair k (an odd last group
         waits); each A token is matched only within its pair; then each pair becomes one group, so
         successive rounds merge across 1, 2, 4, ... frames: at most ceil(log2 T) rounds.
      2. Then ToMe's own split within what remains: A = tokens at even positions in temporal
         order, B = odd positions.
      r = min(tokens left - budget, |A|) in every round: greedy, so merges between the nearest
      frames are used up before any between farther frames or within a frame (what "neighbouring
      frames first" asks), and the schedule has nothing to tune. ToMe fixes r per layer and caps it
      at floor(t / 2) so a layer at most halves the tokens; with no layers between rounds that cap
      would only change the number of rounds, and |A| is what one matching allows (every A token
      merges at most once; several may land on one B token, as scatter_reduce lets them).

    Merging is merge_wavg's size-weighted average, which makes every output the plain mean of its
    inputs: members are 1/size on them, exactly. A merged token's metric for later rounds is the
    mean of its inputs' keys (ToMe recomputes keys in the next layer; there is none here). Ties: an
    A token takes the lowest-ordered best B token; equal edges merge lower-ordered A tokens first
    (ToMe's argsort leaves both unspecified).

    Deviations from FrameFusion: it merges only a token with the same spatial patch of the next
    frame, when their cosine similarity is >= 0.6, inside the LLM, then prunes by attention; here any
    token of the paired frame group may match, and the budget, not a threshold, says how many merge.

    Needs neither prompt nor attention maps: only a similarity metric.

    Args:
        x (`torch.FloatTensor` of shape `(B, L, D)`): visual tokens, L = T*H*W in raster order of `grid`.
        grid: (T, H, W).
        budget: output tokens N, in [1, L].
        keys (`torch.FloatTensor` of shape `(B, L, Dk)`, optional): the metric (ToMe: the attention
            keys, mean over heads); default x.
        check_finite: raise a ValueError naming `x` or `keys` if it holds NaN or Inf.
        members: build `Compressed.members` (B, N, L); False returns it as None, the same tokens without it.
    """
    L = _check_x(x, check_finite)
    T, H, W = _check_tokens(x, grid)  # the pooling modes' check: the grid must hold x's tokens
    budget = _check_budget(budget, L)
    keys = _check_keys(keys, x, check_finite).to(x.device)
    frame = torch.arange(L, device=x.device) // (H * W)
    with torch.no_grad():
        assign = torch.stack([_merge_groups(k, frame, T, budget) for k in keys])  # (B, L)
        size = torch.zeros(assign.shape, dtype=keys.dtype, device=x.device).scatter_add_(
            1, assign, torch.ones(assign.shape, dtype=keys.dtype, device=x.device))
        weight = 1.0 / size.gather(1, assign)
    return _compress(x, assign, weight, budget, members)


def _merge_groups(keys: torch.Tensor, frame: torch.Tensor, n_frames: int, budget: int) -> torch.Tensor:
    """One sample: keys (L, Dk), frame (L,) -> (L,) long, the output each input ends in, numbered in
    first-input order."""
    L, device = keys.shape[0], keys.device
    group = torch.arange(L, device=device)  # current token of each input; tokens kept in first-input order
    first = torch.arange(L, device=device)  # first input of each current token
    group_frame = frame.clone()  # frame group of each current token
    n_tokens, excess = L, L - budget
    while excess > 0:
        size = torch.zeros(n_tokens, dtype=keys.dtype, device=device).index_add_(0, group, torch.ones_like(keys[:, 0]))
        total = torch.zeros(n_tokens, keys.shape[1], dtype=keys.dtype, device=device).index_add_(0, group, keys)
        metric = F.normalize(total / size[:, None], dim=-1)
        if n_frames > 1:  # set A: frame group 2k, set B: 2k + 1, matched within the pair
            edges = [_best_match(metric, (group_frame == 2 * k).nonzero().flatten(),
                                 (group_frame == 2 * k + 1).nonzero().flatten()) for k in range(n_frames // 2)]
            src, dst, score = (torch.cat(e) for e in zip(*edges))
            in_order = src.argsort()  # A tokens in first-input order, for the tie rule
            src, dst, score = src[in_order], dst[in_order], score[in_order]
            group_frame, n_frames = group_frame // 2, (n_frames + 1) // 2
        else:  # ToMe's alternating split
            src, dst, score = _best_match(metric, torch.arange(0, n_tokens, 2, device=device),
                                          torch.arange(1, n_tokens, 2, device=device))
        r = min(excess, src.numel())
        merged = torch.sort(score, descending=True, stable=True).indices[:r]
        into = torch.arange(n_tokens, device=device)
        into[src[merged]] = dst[merged]
        new_first = torch.full((n_tokens,), L, device=device).scatter_reduce(0, into, first, "amin")
        survivors = into.unique()
        survivors = survivors[new_first[survivors].argsort()]
        label = torch.empty(n_tokens, dtype=torch.long, device=device)
        label[survivors] = torch.arange(survivors.numel(), device=device)
        group = label[into[group]]
        first, group_frame = new_first[survivors], group_frame[survivors]
        n_tokens, excess = survivors.numel(), excess - r
    return group


def _best_match(metric: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """For each token of set A (indices a), its most similar token of set B (the first on ties):
    (a, the B token, the cosine)."""
    score, choice = (metric[a] @ metric[b].T).max(dim=1)
    return a, b[choice], score
