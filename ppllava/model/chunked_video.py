"""Long videos encoded a chunk of frames at a time (issue #15): the vision tower, the relevance and the
pooling never hold every frame's pixels or patch features at once.

    tokens = chunked_video_tokens(model, TensorFrames(pixel_values_videos), 64, prompt_embeds=prompts)
    tokens = chunked_video_tokens(model, frames_source, 64, prompt_embeds=prompts)  # pixels read per chunk

What each pooling mode keeps between chunks is the size of its output, not of the video:
`temporal_mean` a running sum, `adaptive` the per-frame spatial means summed into their temporal
windows (average pooling of a box is separable), `spatial` each frame's own tokens, `none` every token
(its output is the video). `prompt` needs the whole map before it can weight any window (the softmax
`s` runs over all T*H*W patches; the window rules read whole windows), so it reads the video twice:
pass 1 keeps only the relevance r, one float per patch; pass 2 recomputes each chunk's tokens and adds
them into their windows with the weights of the full map. The tower runs twice for `prompt`, the price
of never holding the features (benchmarks/long_video_bench.py measures it).

The result equals `PPLLaVA.video_tokens` on the whole video to float tolerance (tests/test_chunked_video.py):
the same weights, the same sums, added in another grouping.
"""
from __future__ import annotations

from typing import Optional, Protocol

import torch

from ppllava.model import inputs
from ppllava.ops import POOLING_MODES, adaptive_pool3d, check_finite, pool_visual_tokens, prompt_relevance, window_geometry
from ppllava.ops.pooling import window_weights
from ppllava.ops.relevance import relevance_softmax


class FrameSource(Protocol):
    """Processed pixels of n videos of T frames, read a range of frames at a time."""

    num_videos: int
    num_frames: int

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Frames [start, stop) of every video: (n, stop - start, 3, S, S) float pixels."""


class TensorFrames:
    """A FrameSource over pixels already in memory, (n, T, 3, S, S): chunks are views."""

    def __init__(self, pixels: torch.Tensor):
        self.pixels = pixels
        self.num_videos, self.num_frames = pixels.shape[:2]

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.pixels[:, start:stop]


def _chunk_pixels(model, frames: FrameSource, start: int, stop: int) -> torch.Tensor:
    pixels = frames.read(start, stop)
    expected = (frames.num_videos, stop - start, 3, model.vision_config.image_size, model.vision_config.image_size)
    if not isinstance(pixels, torch.Tensor) or tuple(pixels.shape) != expected:
        got = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"frame source {type(frames).__name__}.read({start}, {stop}) must give pixels of shape "
                         f"{expected}, got {got}")
    # A source decodes on the CPU (VideoFileFrames); the tower may be on a GPU: only a chunk crosses.
    return pixels.to(model.logit_scale.device)


def _chunk_tokens(model, frames: FrameSource, start: int, stop: int, *, project: bool) -> torch.Tensor:
    """Frames [start, stop) -> their patch tokens (n, stop - start, g, g, Dv), or through the projector (D)."""
    n, g = frames.num_videos, model.patch_grid
    pixels = _chunk_pixels(model, frames, start, stop)
    patches = model._patch_features(pixels.flatten(0, 1)).reshape(n, stop - start, g, g, -1)
    return model.projector(patches) if project else patches


def chunked_relevance(model, frames: FrameSource, chunk_frames: int, prompt_embeds: torch.Tensor) -> torch.Tensor:
    """Pass 1 of `prompt`: the map `s` (n, T, g, g) float32, from the cosine relevance r of each chunk;
    softmax over all T*H*W positions once every r is in (DESIGN.md §2, as `prompt_relevance`)."""
    cfg, T = model.config, frames.num_frames
    r = torch.cat([
        prompt_relevance(model._patch_embeds(_chunk_tokens(model, frames, t, min(t + chunk_frames, T), project=False)),
                         prompt_embeds, model.logit_scale, check_finite=cfg.check_finite)[0]
        for t in range(0, T, chunk_frames)], dim=1)
    return relevance_softmax(r, model.logit_scale)


def chunked_video_tokens(model, frames: FrameSource, chunk_frames: int, *,
                         prompt_embeds: Optional[torch.Tensor] = None,
                         relevance: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`model.video_tokens` of the videos in `frames`, reading at most `chunk_frames` frames at a time:
    (n, video_token_count(T), D). `prompt_embeds` (n, Dc) for 'prompt', or `relevance` (n, T, g, g), a
    given map (an oracle), which skips pass 1."""
    cfg, mode = model.config, model.config.pooling
    if mode not in POOLING_MODES:
        raise ValueError(f"chunked encoding covers the pooling modes {POOLING_MODES}; pooling {mode!r} selects or "
                         "prunes over the whole video at once")
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    n, T, g = frames.num_videos, frames.num_frames, model.patch_grid
    before = cfg.pool_position == "before_projector"
    chunks = [(t, min(t + chunk_frames, T)) for t in range(0, T, chunk_frames)]
    out_grid = model.video_geometry(T)  # a clear error for frames the pooling does not cover, before any compute

    def tokens(start, stop):
        x = _chunk_tokens(model, frames, start, stop, project=not before)
        if cfg.check_finite:
            check_finite(x, "video visual tokens")
        return x

    if mode == "prompt":
        if relevance is None:
            if prompt_embeds is None:
                raise ValueError("pooling 'prompt' needs clip_input_ids (the CLIP prompt of each sample)")
            relevance = chunked_relevance(model, frames, chunk_frames, prompt_embeds)
        else:
            inputs.check_relevance(relevance, n, T, g, cfg.check_finite)
        out, kernel, stride = window_geometry((T, g, g), **model.layout.video_pool_geometry())
        weights = window_weights(relevance, out, kernel, stride, cfg.pool_temperature, cfg.weighting, cfg.pool_margin)
        pooled = _add_into_windows(tokens, chunks, weights, out, kernel, stride)
    elif mode == "none":
        pooled = torch.cat([tokens(a, b) for a, b in chunks], dim=1)
    elif mode == "spatial":  # per frame: each chunk pooled on its own is the video's pooling, frame by frame
        pooled = torch.cat([pool_visual_tokens(tokens(a, b).flatten(1, 3), (b - a, g, g), "spatial", check_finite=False)[0]
                            for a, b in chunks], dim=1)
    elif mode == "temporal_mean":
        pooled = _temporal_windows(tokens, chunks, T, 1, (g, g), adaptive=False)
    else:  # adaptive
        pooled = _temporal_windows(tokens, chunks, T, out_grid[0], out_grid[1:], adaptive=True)
    pooled = pooled.reshape(n, -1, pooled.shape[-1])
    return model.projector(pooled) if before else pooled


def _temporal_windows(tokens, chunks, T: int, out_t: int, out_hw, *, adaptive: bool) -> torch.Tensor:
    """Average pooling of the whole video to (out_t, H', W') from chunks: each frame's spatial means
    (adaptive over H, W, or none) summed into every temporal window that holds it (adaptive pooling's
    windows [floor(i T / O), ceil((i + 1) T / O)) may overlap), divided by the window's length."""
    starts = [(i * T) // out_t for i in range(out_t)]
    stops = [-((-(i + 1) * T) // out_t) for i in range(out_t)]
    sums = [None] * out_t  # one (n, H', W', D) float32 sum per temporal window: the output's size
    for a, b in chunks:
        x = tokens(a, b)  # (n, c, g, g, D)
        if adaptive:  # spatial adaptive means per frame: (n, c, H', W', D)
            n, c, g1, g2, D = x.shape
            x = adaptive_pool3d(x.flatten(1, 3), (c, g1, g2), (c, *out_hw), check_finite=False)[0].view(n, c, *out_hw, D)
        for i, (lo, hi) in enumerate(zip(starts, stops)):
            lo, hi = max(lo, a), min(hi, b)
            if lo < hi:
                part = x[:, lo - a : hi - a].sum(1, dtype=torch.promote_types(x.dtype, torch.float32))
                sums[i] = part if sums[i] is None else sums[i] + part
    return torch.stack([total / (hi - lo) for total, lo, hi in zip(sums, starts, stops)], dim=1).to(x.dtype)


def _add_into_windows(tokens, chunks, weights: torch.Tensor, out, kernel, stride) -> torch.Tensor:
    """Pass 2 of `prompt`: out[w] = sum_{i in w} a_i x_i, each chunk's frames added into the temporal
    windows that hold them: for window j, the chunk's frames [lo, hi) sit at offsets lo - j*dT ..
    hi - 1 - j*dT, one product over them per spatial offset (b, c). weights (n, T', H', W', K), K =
    kT*kH*kW in (a, b, c) order -> (n, T', H', W', D) in the tokens' dtype, accumulated in float32."""
    (oT, oH, oW), (kT, kH, kW), (dT, dH, dW) = out, kernel, stride
    w6 = weights.reshape(*weights.shape[:4], kT, kH * kW)  # (n, T', H', W', kT, kH*kW)
    rows = [None] * oT  # one (n, H', W', D) sum per temporal window: the output's size
    for a, b in chunks:
        x = tokens(a, b)  # (n, c, g, g, D)
        acc_dtype = torch.promote_types(x.dtype, torch.float32)
        for j in range(max(0, -(-(a - kT + 1) // dT)), min(oT - 1, (b - 1) // dT) + 1):
            lo, hi = max(a, j * dT), min(b, j * dT + kT)  # frames of window j in this chunk
            if lo >= hi:
                continue
            for spot in range(kH * kW):
                bh, bw = divmod(spot, kW)
                view = x[:, lo - a : hi - a, bh : bh + (oH - 1) * dH + 1 : dH, bw : bw + (oW - 1) * dW + 1 : dW]
                mix = w6[:, j, :, :, lo - j * dT : hi - j * dT, spot]  # (n, H', W', frames)
                term = torch.einsum("nthwd,nhwt->nhwd", view.to(acc_dtype), mix)
                rows[j] = term if rows[j] is None else rows[j] + term
    return torch.stack(rows, dim=1).to(x.dtype)
