"""Helpers the benchmark scripts share: median timing and peak memory in a fresh process."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from ppllava.memory import peak_extra_mib  # noqa: F401  (re-exported: the benchmarks import it from here)
from ppllava.model import PPLLaVA


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str, repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn` in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cuda_peak_extra_mib(fn: Callable[[], object]) -> float:
    """Peak CUDA memory (MiB) of one call of `fn` beyond what was allocated before it, in-process."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def refuse_paper_without_cuda(parser, args) -> None:
    """`--paper` on a device that is not CUDA is a usage error: the 7B model would be built and run on the CPU
    for minutes before anything is printed."""
    if args.paper and not str(args.device).startswith("cuda"):
        parser.error(f"--paper needs a CUDA device, got --device {args.device}")


def random_paper_model(config, device: str) -> PPLLaVA:
    """A model of `config` (the paper's widths: 7B parameters) with random N(0, 0.02) weights, built on
    the meta device and filled on `device`, so no full-size copy is ever initialised on the CPU."""
    with torch.device("meta"):
        model = PPLLaVA(config)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.normal_(0, 0.02)
        model.logit_scale.fill_(4.6052)
    # Buffers computed at construction, not loaded: make them again on the device.
    model.clip_text.embeddings.register_buffer(
        "position_ids", torch.arange(config.text_context_length, device=device).expand((1, -1)), persistent=False)
    positions = (config.image_size // config.patch_size) ** 2 + 1
    model.vision_tower.embeddings.register_buffer(
        "position_ids", torch.arange(positions, device=device).expand((1, -1)), persistent=False)
    rotary = model.language_model.model.rotary_emb
    model.language_model.model.rotary_emb = type(rotary)(config=model.llm_config).to(device)
    return model
