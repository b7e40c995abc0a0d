"""Time and peak memory of a long-video prefill against its length (issue #15): the video's visual
tokens, then the LLM's forward over the prompt that holds them, for one video on the CPU.

    rows = measure_prefill_cost([16, 256, 2048], ["adaptive", "prompt"], chunk_frames=64)

Two ways to run each (mode, length): `streamed`, the frames made a chunk at a time (`SyntheticFrames`,
a FrameSource that never holds the video) and encoded by `PPLLaVA.long_video_tokens`; and `one_shot`,
the whole (1, T, 3, S, S) pixel tensor through `forward`, as a batch from the processor would go. Peak
memory is the resident set's high-water mark above what was there before the call, in a fresh process
per measurement (`ppllava.memory.peak_extra_mib`), so one run's allocations do not hide another's.
benchmarks/long_video_bench.py prints the table; notebook 07 draws it.
"""
from __future__ import annotations

import functools
import statistics
import time
from typing import Dict, List, Sequence

import torch

from ppllava.config import PPLLaVAConfig
from ppllava.memory import peak_extra_mib
from ppllava.model import PPLLaVA
from ppllava.model.token_layout import TokenLayout

# 16 visual tokens per video, as in notebook 07
MODES = {"none": {"pooling": "none"},
         "adaptive": {"pooling": "adaptive", "video_output_size": (4, 2, 2)},
         "prompt": {"pooling": "prompt", "video_output_size": (4, 2, 2), "weighting": "invariant"}}
CLIP_PROMPT = [49406, 320, 1125, 49407]  # BOS, two words, EOS: the prompt's length does not matter here


class SyntheticFrames:
    """A FrameSource of n videos of T random frames that never holds the video: frame t is frame
    t % bank of a bank drawn once, so reading a chunk costs a copy, like the pixel tensor's slice
    (the cost being measured is the model's, not the drawing's)."""

    def __init__(self, num_videos: int, num_frames: int, size: int, seed: int = 0, bank: int = 64):
        self.num_videos, self.num_frames = num_videos, num_frames
        g = torch.Generator().manual_seed(seed)
        self.bank = torch.randn(num_videos, min(bank, num_frames), 3, size, size, generator=g)

    def read(self, start: int, stop: int) -> torch.Tensor:
        index = torch.arange(start, stop) % self.bank.shape[1]
        return self.bank.index_select(1, index)


def prefill_fn(mode: str, frames: int, chunk_frames: int, how: str):
    """The prefill as a no-argument function, its model (and for one_shot its pixels) built first."""
    if how not in ("streamed", "one_shot"):
        raise ValueError(f"how must be 'streamed' or 'one_shot', got {how!r}")
    torch.manual_seed(0)
    model = PPLLaVA(PPLLaVAConfig.from_name("tiny", num_frames=frames, **MODES[mode])).eval()
    source = SyntheticFrames(1, frames, model.config.image_size)
    return prefill_call(model, source, source.read(0, frames) if how == "one_shot" else None, chunk_frames)


def prefill_call(model, source: SyntheticFrames, pixels, chunk_frames: int, device="cpu"):
    """One video's prefill on `model` (its config's mode) as a no-argument function: `pixels` (1, T, 3, S, S)
    whole through `forward`, or, with `pixels` None, `source` streamed `chunk_frames` at a time."""
    n = model.video_token_count(source.num_frames)
    input_ids = torch.tensor([[1] + [model.config.video_token_id] * n + [5, 6, 7]], device=device)
    clip_ids = torch.tensor([CLIP_PROMPT], device=device)

    @torch.no_grad()
    def run():
        if pixels is not None:
            return model(input_ids, pixel_values_videos=pixels, clip_input_ids=clip_ids).logits
        tokens = model.long_video_tokens(source, clip_ids, chunk_frames=chunk_frames)
        return model(input_ids, video_embeds=tokens).logits

    return run


def fits(mode: str, frames: int) -> bool:
    """Whether the prompt with this video's tokens fits the tiny LLM's positions (`none` keeps every token)."""
    cfg = PPLLaVAConfig.from_name("tiny", num_frames=frames, **MODES[mode])
    return TokenLayout(cfg).video_token_count(frames) + 4 <= cfg.llm_max_positions  # + prefill_fn's 4 text tokens


def measure_prefill_cost(lengths: Sequence[int], modes: Sequence[str], chunk_frames: int = 64,
                         ways: Sequence[str] = ("streamed", "one_shot"), repeats: int = 3,
                         peak: bool = True) -> List[Dict]:
    """One row per (mode, way, length) that fits the LLM: median ms over `repeats` calls after a warm-up, and
    the peak memory above the start of one call (MiB, fresh process; None without `peak`, which saves a
    process start per row, e.g. in smoke runs)."""
    rows = []
    for mode in modes:
        for how in ways:
            for frames in lengths:
                if not fits(mode, frames):
                    continue
                run = prefill_fn(mode, frames, chunk_frames, how)
                run()  # warm-up
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    run()
                    times.append((time.perf_counter() - start) * 1e3)
                mib = peak_extra_mib(functools.partial(prefill_fn, mode, frames, chunk_frames, how), "cpu") if peak else None
                rows.append({"mode": mode, "way": how, "frames": frames, "ms": round(statistics.median(times), 1),
                             "peak_mib": None if mib is None else round(mib, 1)})
    return rows
