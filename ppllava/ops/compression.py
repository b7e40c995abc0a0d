"""The field's other visual-token compressions, one contract (issue #16, DESIGN.md §5).

Every method takes visual tokens x (B, L, D), L = T*H*W in raster order of a grid (T, H, W),
and a budget N in [1, L], and returns a `Compressed`: exactly N output tokens and, per output,
the weights of the inputs it mixes. Outputs come in the order of their first input index (time,
then raster order), so an LLM reads them in time order. In this module L counts the input
visual tokens and N the outputs (DESIGN.md calls the input count N; the text length plays no
part here).

Each output is a weighted sum of inputs and each input feeds at most one output, so a method
only says, per input, which output it feeds (or none) and with what weight; `_compress` builds
tokens and members from that in one place. The choices (which tokens, which groups) are made
without gradients, as in the reference code; tokens stay differentiable in x through the
weights. Tokens come from those (output, weight) pairs by a scatter-add over the outputs, never
from members, so `members=False` (what the model passes: ppllava/model/compress_tokens.py) returns
the same tokens, bit for bit, without the (B, N, L) members, which at 1,024 outputs of 18,432
inputs is 75 MB of float32 a video. Token merging (ToMe / FrameFusion) lives in `ppllava/ops/token_merging.py`.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch
import torch.nn.functional as F

from ppllava.ops.checks import check_finite as _check_finite
from ppllava.ops.geometry import _as_int, as_triple

# The `PPLLaVAConfig.pooling` names of these methods (the model dispatches them in
# ppllava/model/compress_tokens.py), which compress a video before the LLM reads it.
COMPRESSION_MODES = ("topk", "random", "merge", "dominant")
# Pooling names of the methods that prune inside the LLM, during prefill: the LLM reads every visual token
# and keeps the budget from one of its layers on (ppllava/model/fastv.py).
LLM_PRUNING_MODES = ("fastv",)


class Compressed(NamedTuple):
    """What every compression method returns.

    tokens (`torch.FloatTensor` of shape `(B, N, D)`): the N = budget outputs, in the dtype of x.
    members (`torch.FloatTensor` of shape `(B, N, L)`, or None): tokens[b, n] = sum_l members[b, n, l] x[b, l];
        float32 (float64 for float64 x); each row sums to 1 (one-hot for a kept token, the merge
        weights for a merged one); a dropped input's column is zero. None when the method was called
        with `members=False` (then `first_inputs`, `sources` and `frames` refuse the result).
    """

    tokens: torch.Tensor
    members: Optional[torch.Tensor]


def _members(c: Compressed, helper: str) -> torch.Tensor:
    if c.members is None:
        raise ValueError(f"{helper} reads Compressed.members, which is None here: call the method with "
                         f"members=True (the default) to get them")
    return c.members


def first_inputs(c: Compressed) -> torch.Tensor:
    """(B, N) long: the lowest input index each output draws on (outputs ascend in it)."""
    return (_members(c, "first_inputs") != 0).to(torch.int32).argmax(-1)  # argmax returns the first maximum


def sources(c: Compressed) -> List[List[List[int]]]:
    """sources(c)[b][n]: the input indices output n of sample b draws on, ascending."""
    return [[row.nonzero().flatten().tolist() for row in sample] for sample in _members(c, "sources")]


def frames(c: Compressed, grid) -> torch.Tensor:
    """(B, N) long: the earliest frame each output draws on; input l lies in frame l // (H*W) of grid (T, H, W)."""
    L = _members(c, "frames").shape[-1]
    T, H, W = as_triple(grid, "grid")
    if T * H * W != L:
        raise ValueError(f"grid {(T, H, W)} holds T*H*W = {T * H * W} tokens but members has L = {L} inputs")
    return first_inputs(c) // (H * W)


# --- checks -----------------------------------------------------------------------------------
def _check_x(x: torch.Tensor, check_finite: bool) -> int:
    if x.ndim != 3:
        raise ValueError(f"x must have shape (B, L, D), got {tuple(x.shape)}")
    if check_finite:
        _check_finite(x, "x (visual tokens)")
    return x.shape[1]


def _check_budget(budget, L: int) -> int:
    budget = _as_int(budget, "budget")
    if not 1 <= budget <= L:
        raise ValueError(f"budget must be in [1, L = {L}] (the input tokens), got {budget}")
    return budget


def _check_per_token(t: torch.Tensor, name: str, x: torch.Tensor, check_finite: bool) -> torch.Tensor:
    """A (B, L) score per input token, checked against x (B, L, D)."""
    if tuple(t.shape) != tuple(x.shape[:2]):
        raise ValueError(f"{name} must have shape (B, L) = {tuple(x.shape[:2])}, got {tuple(t.shape)}")
    if check_finite:
        _check_finite(t, name)
    return t


def _check_keys(keys: Optional[torch.Tensor], x: torch.Tensor, check_finite: bool) -> torch.Tensor:
    """keys (B, L, Dk), default x, in float32 (float64 for float64 input)."""
    if keys is None:
        keys = x.detach()
    elif keys.ndim != 3 or tuple(keys.shape[:2]) != tuple(x.shape[:2]):
        raise ValueError(f"keys must have shape (B, L, Dk) with (B, L) = {tuple(x.shape[:2])}, got {tuple(keys.shape)}")
    elif check_finite:
        _check_finite(keys, "keys")
    return keys.detach().to(torch.promote_types(keys.dtype, torch.float32))


# --- the one builder ----------------------------------------------------------------------------
def _compress(x: torch.Tensor, assign: torch.Tensor, weight: torch.Tensor, n: int, members: bool = True) -> Compressed:
    """assign (B, L) long: the output (0..n-1, any order) each input feeds, -1 for none; weight (B, L):
    its weight there. Outputs are renumbered by first input index; tokens accumulate in float32 by a
    scatter-add over the outputs, whether or not `members` (B, n, L) is built beside them."""
    B, L, D = x.shape
    acc = torch.promote_types(x.dtype, torch.float32)
    kept = assign >= 0
    position = torch.arange(L, device=x.device).expand(B, L)
    spare = torch.where(kept, assign, n)  # dropped inputs go to a spare output n, cut below
    first = torch.full((B, n + 1), L, device=x.device).scatter_reduce(1, spare, position, "amin")[:, :n]
    assert bool((first < L).all()), "every output must draw on an input"
    rank = torch.empty_like(first).scatter_(1, first.argsort(dim=1), torch.arange(n, device=x.device).expand(B, n))
    slot = torch.where(kept, rank.gather(1, assign.clamp_min(0)), n)
    w = torch.where(kept, weight.to(acc), 0.0)
    weighted = w[..., None] * x.to(acc)  # (B, L, D): differentiable in x
    tokens = x.new_zeros((B, n + 1, D), dtype=acc).scatter_add(1, slot[..., None].expand(B, L, D), weighted)
    if not members:
        return Compressed(tokens[:, :n].to(x.dtype), None)
    weights = x.new_zeros((B, n + 1, L), dtype=acc).scatter_(1, slot[:, None, :], w[:, None, :])[:, :n]
    return Compressed(tokens[:, :n].to(x.dtype), weights)


def _top(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """(B, budget) long: the indices of the `budget` highest of scores (B, L), best first; ties go to the lower index."""
    return torch.sort(scores.detach(), dim=1, descending=True, stable=True).indices[:, :budget]


def _keep_top(x: torch.Tensor, scores: torch.Tensor, budget: int, members: bool) -> Compressed:
    """Keep the `budget` inputs of highest score (B, L); ties go to the lower index."""
    with torch.no_grad():
        kept = _top(scores, budget)
        assign = torch.full(scores.shape, -1, dtype=torch.long, device=x.device)
        assign.scatter_(1, kept.to(x.device), torch.arange(budget, device=x.device).expand_as(kept))
    return _compress(x, assign, torch.ones(assign.shape, device=x.device), budget, members)


# --- selection ----------------------------------------------------------------------------------
def topk_select(x: torch.Tensor, s: torch.Tensor, budget: int, *, check_finite: bool = True,
                members: bool = True) -> Compressed:
    """Hard top-k by the prompt relevance: keep the `budget` tokens of highest s (DESIGN.md §5 "topk").

    The control for prompt-guided pooling: the same CLIP map s picks the tokens, without soft mixing,
    so "which tokens" is separated from "how they are mixed". Needs the prompt (through s); no
    attention maps. Ties go to the lower input index.

    Args:
        x (`torch.FloatTensor` of shape `(B, L, D)`): visual tokens, L = T*H*W in raster order.
        s (`torch.FloatTensor` of shape `(B, T, H, W)`): the relevance map `prompt_relevance` returns.
        budget: output tokens N, in [1, L].
        check_finite: raise a ValueError naming `x` or `s` if it holds NaN or Inf.
        members: build `Compressed.members` (B, N, L); False returns it as None, the same tokens without
            it (every method here takes this keyword).
    """
    L = _check_x(x, check_finite)
    if s.ndim != 4 or s.shape[0] != x.shape[0] or s.shape[1:].numel() != L:
        raise ValueError(f"s must have shape (B, T, H, W) with B = {x.shape[0]} and T*H*W = L = {L}, "
                         f"got {tuple(s.shape)}")
    budget = _check_budget(budget, L)
    if check_finite:
        _check_finite(s, "s (relevance)")
    return _keep_top(x, s.reshape(x.shape[0], L), budget, members)


def random_select(x: torch.Tensor, budget: int, generator: Optional[torch.Generator] = None, *,
                  check_finite: bool = True, members: bool = True) -> Compressed:
    """Keep `budget` tokens drawn uniformly without replacement: the floor every method must beat.

    Needs neither prompt nor attention. Reproducible: the same `generator` state draws the same
    tokens. Each sample draws its own subset: the tokens with the `budget` highest of L i.i.d.
    uniform numbers.
    """
    L = _check_x(x, check_finite)
    budget = _check_budget(budget, L)
    device = generator.device if generator is not None else x.device
    draw = torch.rand(x.shape[:2], generator=generator, device=device)
    return _keep_top(x, draw.to(x.device), budget, members)


def fastv_select(x: torch.Tensor, text_attention: torch.Tensor, budget: int, *,
                 check_finite: bool = True, members: bool = True) -> Compressed:
    """FastV's selection rule (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024):
    keep the `budget` visual tokens the last text token attends to most at LLM layer K.

    Needs the prompt and the LLM's attention: `text_attention` (B, L) is the attention row of the
    last prompt token over the visual tokens at layer K, averaged over heads (FastV takes the
    attention map that layer K-1, 0-indexed, outputs, and prunes before layer K). FastV's code keeps
    round(L * (1 - R)) tokens for a ratio R; here the budget is given directly. Ties go to the lower
    index (torch.topk's are unspecified). Only the selection: pruning the hidden states inside the
    LLM during prefill (keeping the kept tokens' original position ids, as FastV does) and a KV cache
    that holds only them for generation live in ppllava/model/fastv.py, which ranks by `fastv_keep`,
    this rule without the tokens.
    """
    _check_x(x, check_finite)
    text_attention = _check_per_token(text_attention, "text_attention", x, check_finite)
    return _keep_top(x, text_attention, _check_budget(budget, x.shape[1]), members)


def fastv_keep(text_attention: torch.Tensor, budget: int) -> torch.Tensor:
    """`fastv_select`'s rule as indices: text_attention (B, L) -> (B, budget) long, the kept inputs in
    ascending (time) order; `first_inputs(fastv_select(x, text_attention, budget))` equals it. The model
    prunes hidden states inside the LLM with it, where building `members` (B, budget, L) would cost
    budget x L floats per video for nothing."""
    if text_attention.ndim != 2:
        raise ValueError(f"text_attention must have shape (B, L), got {tuple(text_attention.shape)}")
    return _top(text_attention, _check_budget(budget, text_attention.shape[1])).sort(dim=1).values


# --- dominant and contextual tokens -------------------------------------------------------------
def dominant_merge(x: torch.Tensor, cls_attention: torch.Tensor, budget: int, contextual: int, *,
                   keys: Optional[torch.Tensor] = None, check_finite: bool = True,
                   members: bool = True) -> Compressed:
    """VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language
    Models", 2024): `budget - contextual` dominant tokens kept, the rest merged into `contextual` ones.

    Prompt-free; needs the vision tower's attention: `cls_attention` (B, L) is the [CLS] row over the
    patches (VisionZip: the penultimate layer's, summed over heads; the mean ranks the same), and
    `keys` (B, L, Dk) the similarity metric (VisionZip: that layer's attention keys, mean over heads;
    default x). As in VisionZip's CLIPVisionTower_VisionZip.forward:
      1. dominant: the budget - contextual tokens of highest cls_attention (ties: lower index);
      2. the rest, in input order, hold `contextual` targets at rest positions 0, step, 2*step, ...
         with step = max(1, len(rest) // contextual);
      3. every other rest token joins the target of highest cosine similarity of keys (first on ties);
      4. a contextual token is target + mean(its joined tokens), as the code computes it.
    Deviations: x has no [CLS] token, so none is kept (VisionZip keeps it beside its dominant tokens
    and counts it in `dominant`); step 4's sum weighs 2 when a target has joined tokens, so it is
    halved, (target + mean(joined)) / 2, to keep rows summing to 1 (the code's relative weights, not
    the plain group mean); outputs come in first-input order (VisionZip: [CLS], dominant, contextual).
    """
    L = _check_x(x, check_finite)
    cls_attention = _check_per_token(cls_attention, "cls_attention", x, check_finite)
    budget = _check_budget(budget, L)
    contextual = _as_int(contextual, "contextual")
    if not 0 <= contextual <= budget:
        raise ValueError(f"contextual must be in [0, budget = {budget}], got {contextual}")
    keys = _check_keys(keys, x, check_finite)
    B, dominant = x.shape[0], budget - contextual
    with torch.no_grad():
        order = torch.sort(cls_attention, dim=1, descending=True, stable=True).indices.to(x.device)
        assign = torch.full((B, L), -1, dtype=torch.long, device=x.device)
        weight = torch.ones((B, L), dtype=keys.dtype, device=x.device)
        assign.scatter_(1, order[:, :dominant], torch.arange(dominant, device=x.device).expand(B, dominant))
        if contextual:
            rest = order[:, dominant:].sort(dim=1).values  # (B, L - dominant), input order
            step = max(1, rest.shape[1] // contextual)
            is_target = torch.zeros(rest.shape[1], dtype=torch.bool, device=x.device)
            is_target[torch.arange(0, rest.shape[1], step, device=x.device)[:contextual]] = True
            targets, joined = rest[:, is_target], rest[:, ~is_target]  # (B, contextual), (B, M)
            metric = F.normalize(keys, dim=-1)
            pick = lambda idx: metric.gather(1, idx[..., None].expand(-1, -1, metric.shape[-1]))  # noqa: E731
            choice = torch.bmm(pick(joined), pick(targets).transpose(1, 2)).argmax(-1)  # (B, M)
            count = torch.zeros(targets.shape, dtype=keys.dtype, device=x.device).scatter_add_(
                1, choice, torch.ones(choice.shape, dtype=keys.dtype, device=x.device))
            labels = dominant + torch.arange(contextual, device=x.device).expand(B, contextual)
            assign.scatter_(1, targets, labels)
            weight.scatter_(1, targets, torch.where(count > 0, 0.5, 1.0).to(keys.dtype))
            assign.scatter_(1, joined, dominant + choice)
            weight.scatter_(1, joined, 0.5 / count.gather(1, choice))
    return _compress(x, assign, weight, budget, members)
