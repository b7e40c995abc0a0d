"""Prompt-guided 3D pooling and the equal-interface baselines (DESIGN.md §2).

Visual tokens are token-major, as the model holds them: `x` of shape (B, N, D) with
N = T*H*W over a `grid` (T, H, W). Token-major (B, T, H, W, D) is exactly channels-last
memory, so every window offset is a strided *view* of `x`: the pooling below walks the
kernel offsets (18 for the paper's (2, 3, 3)) and accumulates `weight * view` into the
output. That reads the input once, never copies it per kernel element (the released
code's unfold does), and beats `avg_pool3d` on channel-major data on a CPU. On a GPU, where
18 small kernels are launch-bound, tiling windows go through `_tiled_weighted_sum` instead
(benchmarks/pooling_bench.py measures both against avg_pool3d).
"""
from __future__ import annotations

import itertools
import math
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from ppllava.ops.checks import check_finite as _check_finite
from ppllava.ops.geometry import IntOrTriple, Triple, as_triple, window_geometry

POOLING_MODES = ("none", "temporal_mean", "adaptive", "spatial", "prompt")
WEIGHTINGS = ("softmax", "normalized", "invariant", "peak")
# "invariant": log-relevance spreads below this (in nats) count as a flat window, so float noise on a
# uniform map is not sharpened into a pick (the rule is blind to the map's scale by design).
FLAT_SPREAD = 1e-3


def _window_views(t: torch.Tensor, out: Triple, kernel: Triple, stride: Triple) -> Iterator[torch.Tensor]:
    """Per kernel offset (a, b, c) in row-major order, the strided view of `t` (B, T, H, W, ...)
    holding that offset's element of every window: shape (B, T', H', W', ...)."""
    for a, b, c in itertools.product(*(range(k) for k in kernel)):
        yield t[
            :,
            a : a + (out[0] - 1) * stride[0] + 1 : stride[0],
            b : b + (out[1] - 1) * stride[1] + 1 : stride[1],
            c : c + (out[2] - 1) * stride[2] + 1 : stride[2],
        ]


class _WindowWeightedSum(torch.autograd.Function):
    """out[w] = sum_{o in kernel} weights[w, o] * x[w + o], with a hand-written backward so no
    full-size temporary is made per kernel offset (autograd of a slice would make one each)."""

    @staticmethod
    def forward(ctx, x5, weights, out, kernel, stride):  # x5 (B,T,H,W,D), weights (B|1,T',H',W',K)
        acc_dtype = torch.promote_types(x5.dtype, torch.float32)
        acc = x5.new_zeros((x5.shape[0], *out, x5.shape[-1]), dtype=acc_dtype)  # (B, T', H', W', D)
        for o, view in enumerate(_window_views(x5, out, kernel, stride)):
            acc.addcmul_(view, weights[..., o : o + 1])
        ctx.save_for_backward(x5, weights)
        ctx.geometry = (out, kernel, stride)
        return acc.to(x5.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # grad_out (B, T', H', W', D)
        x5, weights = ctx.saved_tensors
        out, kernel, stride = ctx.geometry
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            # Tiling windows that cover the grid write every input position exactly once.
            exact = all(k == d and o * k == i for o, k, d, i in zip(out, kernel, stride, x5.shape[1:4]))
            grad_x = torch.empty_like(x5) if exact else torch.zeros_like(x5)
            w = weights.to(x5.dtype)
            for o, view in enumerate(_window_views(grad_x, out, kernel, stride)):
                if exact:
                    torch.mul(grad_out, w[..., o : o + 1], out=view)
                else:
                    view.addcmul_(grad_out, w[..., o : o + 1])
        if ctx.needs_input_grad[1]:
            product = torch.empty_like(grad_out)  # one reused buffer, not one per offset
            grad_w = torch.stack(
                [torch.mul(grad_out, v, out=product).sum(-1) for v in _window_views(x5, out, kernel, stride)], dim=-1
            ).to(weights.dtype)
        return grad_x, grad_w, None, None, None


def _tiled_weighted_sum(x5: torch.Tensor, weights: torch.Tensor, out: Triple, kernel: Triple) -> torch.Tensor:
    """The same sum for tiling windows (stride = kernel) as one batched matrix product: gather
    each window's K tokens into a row (one copy), then (1, K) @ (K, D) per window. On a GPU this
    beats the per-offset loop (launch-bound there) and broadcasting multiplies; on a CPU the loop
    is faster, so each device gets its own formulation.

    x5 (B, T, H, W, D), weights (B|1, T', H', W', K) -> (B, T', H', W', D) in the dtype of x5."""
    B, D = x5.shape[0], x5.shape[-1]
    (oT, oH, oW), (kT, kH, kW) = out, kernel
    n_windows, k = B * oT * oH * oW, kT * kH * kW
    blocks = x5[:, : oT * kT, : oH * kH, : oW * kW].reshape(B, oT, kT, oH, kH, oW, kW, D)
    rows = blocks.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(n_windows, k, D)  # (windows, K, D)
    mix = weights.expand(B, oT, oH, oW, k).reshape(n_windows, 1, k).to(x5.dtype)
    return torch.bmm(mix, rows).view(B, oT, oH, oW, D)  # bf16 products accumulate in float32


def _stack_windows(t: torch.Tensor, out: Triple, kernel: Triple, stride: Triple) -> torch.Tensor:
    """(B, T, H, W) -> (B, T', H', W', K): each window's K elements, kernel offsets in row-major order
    (the order of `_window_views`)."""
    if kernel == stride:  # tiling: one reshape-and-permute instead of K strided slices (fewer kernels on a GPU)
        (oT, oH, oW), (kT, kH, kW) = out, kernel
        blocks = t[:, : oT * kT, : oH * kH, : oW * kW].reshape(t.shape[0], oT, kT, oH, kH, oW, kW)
        return blocks.permute(0, 1, 3, 5, 2, 4, 6).reshape(t.shape[0], oT, oH, oW, kT * kH * kW)
    return torch.stack(list(_window_views(t, out, kernel, stride)), dim=-1)


def window_weights(
    relevance: torch.Tensor,
    out: Triple,
    kernel: Triple,
    stride: Triple,
    temperature: float = 0.01,
    weighting: str = "softmax",
    margin: float = 3.0,
) -> torch.Tensor:
    """Per-window mixing weights from a relevance map.

    Args:
        relevance (`torch.FloatTensor` of shape `(B, T, H, W)`): the map `s`.
        out, kernel, stride: resolved window geometry (see `window_geometry`).
        temperature: softmax temperature (weighting "softmax" only).
        weighting: "softmax" (released code: softmax_{i in w}(s_i / temperature)) or
            "normalized" (paper: s_i / sum_{j in w} s_j; needs s >= 0; a window whose relevance
            sums to 0 has no defined weights and gets the plain window mean, the limit of equal s), or
            "invariant" (one rule for every video length; see below), or "peak" (the same, but each
            window sharpened only as far as its best patch comes near the video's peak; below).
        margin: the log-odds `gamma` of weightings "invariant" and "peak" (below); chosen once, at one length.

    Weighting "invariant". `s = softmax(tau r)` over all T*H*W positions, so `log s_i = tau r_i - log Z`
    and every rule applied to `s / temperature` changes with the video's length through Z. Differences
    of `l = log s` within a window do not; but a window of K patches holding a few relevant ones among
    K - n others needs log-odds growing like log K to keep them dominant. So, per window w, over its
    patches with s > 0 (P, K = |P|; a patch with s = 0, an oracle's background or an underflow, takes
    no weight and does not count):

        l_i   = log s_i
        b     = argmax_{j in P} l_j
        gap_w = l_b - mean_{j in P, j != b} l_j          (how far the best patch stands out, in nats)
        a_i   = softmax_{i in P}((margin + log(K - 1)) * (l_i - l_b) / max(gap_w, FLAT_SPREAD))

    A patch at the mean of the rest gets log-odds `margin + log(K - 1)` below the best one, so one
    patch standing out from K - 1 equal others by any amount gets exactly sigmoid(margin) of its
    window at every K, and n such patches about n e^margin / (n e^margin + 1) while n << K. Nothing
    depends on Z (the length), tau (CLIP's scale) or a shift of r. A flat window (gap 0) gets the
    mean of P; a window with one patch in P, all of it; a window of zeros, the plain mean.

    Weighting "peak". "invariant" sharpens every window to its own best patch, relevant or not: of 16
    windows, the one holding the asked-about object and 15 holding whatever each finds least unlike it. The
    released softmax does not (a window of small s is near its mean), but only at the length its temperature
    was set for. "peak" keeps that, with the length removed: with `m = max s` over the video's T*H*W
    positions, `s_i / m = exp(tau (r_i - max r))` does not depend on Z, and per window w of K patches

        a_i = softmax_{i in w}((margin + log(K - 1)) * s_i / m)

    i.e. the released rule with its temperature set by the map, `m / (margin + log(K - 1))`, not by hand. A
    patch at the video's peak among K - 1 patches of s << m gets sigmoid(margin) of its window at every
    length, as under "invariant"; a window whose best patch has s = q m gets log-odds q (margin + log(K - 1))
    over those patches, so a window of nothing relevant stays near its mean. It reads tau through r's
    spread (a CLIP with a flatter scale lights up more patches near the peak). A map of zeros: the mean.

    Returns:
        `torch.FloatTensor` of shape `(B, T', H', W', K)`, K = prod(kernel), float32 (float64 for
        float64 input), summing to 1 over K.
    """
    s = relevance.to(torch.promote_types(relevance.dtype, torch.float32))
    stacked = _stack_windows(s, out, kernel, stride)  # (B, T', H', W', K)
    if weighting == "softmax":
        return torch.softmax(stacked / temperature, dim=-1)
    if weighting in ("normalized", "invariant", "peak") and bool((s < 0).any()):  # s as a share, log s, or s / max s
        raise ValueError(f"weighting {weighting!r} needs a non-negative relevance map; got negative values")
    if weighting == "invariant":
        return _invariant_weights(stacked, margin)
    if weighting == "peak":
        return _peak_weights(stacked, s.flatten(1).amax(1), margin)
    if weighting == "normalized":
        total = stacked.sum(-1, keepdim=True)
        uniform = torch.full_like(stacked, 1.0 / stacked.shape[-1])
        return torch.where(total > 0, stacked / total.clamp_min(torch.finfo(s.dtype).tiny), uniform)
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def _invariant_weights(stacked: torch.Tensor, margin: float) -> torch.Tensor:
    """Weighting "invariant" of `window_weights` (see there): (..., K) window relevances -> (..., K)."""
    present = stacked > 0
    count = present.sum(-1, keepdim=True)
    # clamp before log: log(0) has an infinite gradient that would turn the masked-out branch into NaN
    tiny = torch.finfo(stacked.dtype).tiny
    log_s = stacked.clamp_min(tiny).log()
    # a window of zeros has no best patch: the floor keeps its (discarded) arithmetic finite, gradients too
    best = log_s.masked_fill(~present, float("-inf")).amax(-1, keepdim=True).clamp_min(math.log(tiny))
    rest = (count - 1).clamp_min(1)
    gap = (best - (log_s.masked_fill(~present, 0.0).sum(-1, keepdim=True) - best) / rest).clamp_min(FLAT_SPREAD)
    logits = ((log_s - best) * ((margin + rest.to(log_s.dtype).log()) / gap)).masked_fill(~present, float("-inf"))
    return torch.softmax(logits.masked_fill(count == 0, 0.0), dim=-1)  # a window of zeros: the plain mean


def _peak_weights(stacked: torch.Tensor, peak: torch.Tensor, margin: float) -> torch.Tensor:
    """Weighting "peak" of `window_weights` (see there): (B, T', H', W', K) window relevances and (B,) the
    map's maximum over the whole video -> (B, T', H', W', K)."""
    k = stacked.shape[-1]
    gain = margin + math.log(max(k - 1, 1))
    # a map of zeros has no peak: its share s / m is taken as 0 everywhere, i.e. every window's plain mean
    share = stacked / peak.clamp_min(torch.finfo(stacked.dtype).tiny).view(-1, 1, 1, 1, 1)
    return torch.softmax(gain * share, dim=-1)


def _check_tokens(x: torch.Tensor, grid) -> Triple:
    grid = as_triple(grid, "grid")
    if x.ndim != 3:
        raise ValueError(f"x must have shape (B, N, D), got {tuple(x.shape)}")
    n = grid[0] * grid[1] * grid[2]
    if x.shape[1] != n:
        raise ValueError(f"x has {x.shape[1]} tokens but grid {grid} holds T*H*W = {n}")
    return grid


def _check_pool_arguments(caller: str, output_size, kernel, temperature: float, weighting: str, margin: float) -> None:
    if output_size is None and kernel is None:
        raise ValueError(f"{caller} needs output_size or kernel")
    if not 0 < temperature < float("inf"):  # inf would make every window a plain mean without a word
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if not math.isfinite(margin):
        raise ValueError(f"margin must be finite, got {margin}")


def _pool_weights(relevance: Optional[torch.Tensor], B: int, grid: Triple, geometry, temperature: float,
                  weighting: str, margin: float, dtype: torch.dtype, device, check_finite: bool) -> torch.Tensor:
    """Each window's mixing weights, (B | 1, T', H', W', K): `window_weights`, or without a map the plain mean
    in `dtype`."""
    out, ker, st = geometry
    if relevance is None:
        k = ker[0] * ker[1] * ker[2]
        return torch.full((1, 1, 1, 1, k), 1.0 / k, dtype=dtype, device=device)
    if tuple(relevance.shape) != (B, *grid):
        raise ValueError(f"relevance must have shape (B, T, H, W) = {(B, *grid)}, got {tuple(relevance.shape)}")
    if check_finite:
        _check_finite(relevance, "relevance")
    return window_weights(relevance, out, ker, st, temperature, weighting, margin)


def prompt_guided_pool3d(
    x: torch.Tensor,
    relevance: Optional[torch.Tensor],
    grid,
    *,
    output_size: Optional[IntOrTriple] = None,
    kernel: Optional[IntOrTriple] = None,
    stride: Optional[IntOrTriple] = None,
    temperature: float = 0.01,
    weighting: str = "softmax",
    margin: float = 3.0,
    remainder: str = "error",
    check_finite: bool = True,
) -> Tuple[torch.Tensor, Triple]:
    """Convolution-style 3D pooling in which each window is the relevance-weighted mix of its
    tokens: out[w] = sum_{i in w} a_i x_i (DESIGN.md §2).

    Args:
        x (`torch.FloatTensor` of shape `(B, N, D)`): visual tokens, N = T*H*W, token-major.
        relevance (`torch.FloatTensor` of shape `(B, T, H, W)` or None): the map `s`; None gives
            uniform weights (the plain window mean).
        grid: (T, H, W).
        output_size, kernel, stride: any two (or output_size alone, or kernel alone), see
            `window_geometry`. Windows may overlap.
        temperature: softmax temperature, > 0.
        weighting: "softmax", "normalized", "invariant" or "peak" (see `window_weights`).
        margin: the log-odds of weightings "invariant" and "peak" (see `window_weights`), finite.
        remainder: "error" refuses windows that leave tokens uncovered; "drop" leaves them
            out, as floor-mode avg_pool3d does (see `window_geometry`).
        check_finite: raise a ValueError naming `x` or `relevance` if it holds NaN or Inf.

    Returns:
        (pooled, out_grid): pooled of shape `(B, T'*H'*W', D)` in the dtype of `x` (weights and
        accumulation in float32), out_grid = (T', H', W').
    """
    grid = _check_tokens(x, grid)
    _check_pool_arguments("prompt_guided_pool3d", output_size, kernel, temperature, weighting, margin)
    out, ker, st = window_geometry(grid, output_size, kernel, stride, remainder=remainder)
    B, _, D = x.shape
    if check_finite:
        _check_finite(x, "x (visual tokens)")
    weights = _pool_weights(relevance, B, grid, (out, ker, st), temperature, weighting, margin,
                            torch.promote_types(x.dtype, torch.float32), x.device, check_finite)
    x5 = x.reshape(B, *grid, D)
    if x.is_cuda and ker == st:
        pooled = _tiled_weighted_sum(x5, weights, out, ker)
    else:
        pooled = _WindowWeightedSum.apply(x5, weights, out, ker, st)
    return pooled.reshape(B, -1, D), out


def pool_shared_tokens(
    rows: torch.Tensor,
    index: torch.Tensor,
    relevance: Optional[torch.Tensor],
    *,
    output_size: Optional[IntOrTriple] = None,
    kernel: Optional[IntOrTriple] = None,
    stride: Optional[IntOrTriple] = None,
    temperature: float = 0.01,
    weighting: str = "softmax",
    margin: float = 3.0,
    remainder: str = "error",
    check_finite: bool = True,
) -> Tuple[torch.Tensor, Triple]:
    """`prompt_guided_pool3d(rows[index].reshape(B, N, D), relevance, grid, ...)` for tokens that repeat,
    without making the (B, N, D) tensor.

    A needle video holds still for runs of frames, so after the projector its T*H*W tokens are a few
    distinct rows (`distinct_frames`). Pooling is linear in the tokens: out[w] = sum_{i in w} a_i
    rows[index_i] = sum_r (sum_{i in w, index_i = r} a_i) rows[r]. So each window's weights are summed
    per row into S (B*T'*H'*W', R), one scatter-add of the map's size, and the output is S @ rows: the
    weights cost what the map costs, the mixing what the distinct rows cost, not K strided passes over
    T*H*W tokens of width D (at 1,024 frames of 8 x 8 patches, forward and backward 123 ms -> 3.4 ms in one
    measurement; a whole stage-2 step 5.7x, benchmarks/distinct_frames_bench.py). The same values to
    float rounding (another order of summation), the same gradients.

    Args:
        rows (`torch.FloatTensor` of shape `(R, D)`): the distinct tokens.
        index (`torch.LongTensor` of shape `(B, T, H, W)`): the row each token is, in [0, R); the grid is
            its shape.
        relevance (`(B, T, H, W)` or None), output_size, kernel, stride, temperature, weighting, margin,
            remainder, check_finite: as in `prompt_guided_pool3d`.

    Returns:
        (pooled of shape `(B, T'*H'*W', D)` in the dtype of `rows`, out_grid = (T', H', W')).
    """
    if rows.ndim != 2:
        raise ValueError(f"rows must have shape (R, D), got {tuple(rows.shape)}")
    if index.ndim != 4 or index.dtype != torch.long or index.numel() == 0:
        raise ValueError(f"index must be a non-empty int64 tensor of shape (B, T, H, W), got {tuple(index.shape)} "
                         f"{index.dtype}")
    if int(index.min()) < 0 or int(index.max()) >= rows.shape[0]:
        raise ValueError(f"index must lie in [0, {rows.shape[0]}) (rows of `rows`), got [{int(index.min())}, "
                         f"{int(index.max())}]")
    B, grid = index.shape[0], tuple(index.shape[1:])
    _check_pool_arguments("pool_shared_tokens", output_size, kernel, temperature, weighting, margin)
    out, ker, st = window_geometry(grid, output_size, kernel, stride, remainder=remainder)
    if check_finite:
        _check_finite(rows, "rows (visual tokens)")
    acc = torch.promote_types(rows.dtype, torch.float32)
    weights = _pool_weights(relevance, B, grid, (out, ker, st), temperature, weighting, margin, acc, rows.device,
                            check_finite).to(acc)
    windows, k = out[0] * out[1] * out[2], weights.shape[-1]
    which = _stack_windows(index, out, ker, st).reshape(B, windows, k)  # (B, windows, K) rows
    weights = weights.expand(B, *out, k).reshape(B, windows, k)
    pooled = []
    for b in range(B):  # each video's own span of rows: S stays (windows, rows of one video), not of the batch
        low, high = int(which[b].min()), int(which[b].max()) + 1
        mix = weights.new_zeros(windows, high - low).scatter_add(1, which[b] - low, weights[b])
        pooled.append(mix.to(rows.dtype) @ rows[low:high])  # bf16 products accumulate in float32
    return torch.stack(pooled), out


def adaptive_pool3d(x: torch.Tensor, grid, output_size: IntOrTriple, *,
                    check_finite: bool = True) -> Tuple[torch.Tensor, Triple]:
    """PLLaVA's pooling: `torch.nn.functional.adaptive_avg_pool3d` to `output_size`.

    x (B, N, D) -> ((B, T'*H'*W', D), (T', H', W')); `check_finite` as in `prompt_guided_pool3d`."""
    grid = _check_tokens(x, grid)
    out = as_triple(output_size, "output_size")
    for axis, (o, i) in enumerate(zip(out, grid)):
        if not 1 <= o <= i:
            raise ValueError(f"axis {'THW'[axis]}: output_size {o} must be in [1, input size {i}]")
    if check_finite:
        _check_finite(x, "x (visual tokens)")
    B, _, D = x.shape
    channel_major = x.reshape(B, *grid, D).permute(0, 4, 1, 2, 3)  # (B, D, T, H, W), no copy
    pooled = F.adaptive_avg_pool3d(channel_major, out)  # (B, D, T', H', W')
    return pooled.permute(0, 2, 3, 4, 1).reshape(B, -1, D), out


def pool_visual_tokens(
    x: torch.Tensor,
    grid,
    mode: str,
    *,
    relevance: Optional[torch.Tensor] = None,
    output_size: Optional[IntOrTriple] = None,
    kernel: Optional[IntOrTriple] = None,
    stride: Optional[IntOrTriple] = None,
    temperature: float = 0.01,
    weighting: str = "softmax",
    margin: float = 3.0,
    check_finite: bool = True,
) -> Tuple[torch.Tensor, Triple]:
    """Pool visual tokens by mode name, all modes with one contract: (B, N, D) -> ((B, N', D), grid').

    Modes:
        "none": all tokens.
        "temporal_mean": mean over frames (LLaVA-style), grid (1, H, W).
        "adaptive": PLLaVA's adaptive average pooling to `output_size`.
        "spatial": LLaVA-NeXT-Video's 2x2 average per frame, grid (T, H//2, W//2); the one mode
            that drops a remainder (an odd row / column), because its reference's floor mode does.
        "prompt": this method; needs `relevance` and a geometry (output_size and/or kernel, stride).

    `relevance`, `temperature`, `weighting` and `margin` are read by "prompt" only. The fixed-geometry modes
    (none, temporal_mean, spatial) raise if given a geometry rather than ignoring it.
    `check_finite`: every mode refuses NaN / Inf in `x` (and "prompt" in `relevance`), naming it.
    """
    grid = _check_tokens(x, grid)
    geometry_given = any(v is not None for v in (output_size, kernel, stride))
    if mode in ("none", "temporal_mean", "spatial") and geometry_given:
        raise ValueError(f"pooling mode {mode!r} has a fixed geometry; output_size/kernel/stride are for 'adaptive' and 'prompt'")
    if mode not in POOLING_MODES:
        raise ValueError(f"pooling mode must be one of {POOLING_MODES}, got {mode!r}")
    if check_finite:  # once here; the calls below skip their own check
        _check_finite(x, "x (visual tokens)")
    if mode == "none":
        return x, grid
    if mode == "temporal_mean":
        return prompt_guided_pool3d(x, None, grid, kernel=(grid[0], 1, 1), check_finite=False)
    if mode == "spatial":
        return prompt_guided_pool3d(x, None, grid, kernel=(1, min(2, grid[1]), min(2, grid[2])), remainder="drop",
                                    check_finite=False)
    if mode == "adaptive":
        if output_size is None or kernel is not None or stride is not None:
            raise ValueError("pooling mode 'adaptive' takes output_size only")
        return adaptive_pool3d(x, grid, output_size, check_finite=False)
    if mode == "prompt":
        if relevance is None:
            raise ValueError("pooling mode 'prompt' needs a relevance map (B, T, H, W)")
        if check_finite:
            _check_finite(relevance, "relevance")
        return prompt_guided_pool3d(
            x, relevance, grid, output_size=output_size, kernel=kernel, stride=stride,
            temperature=temperature, weighting=weighting, margin=margin, check_finite=False,
        )
