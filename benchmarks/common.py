"""Helpers the benchmark scripts share: median timing and peak memory in a fresh process."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from ppllava.memory import peak_extra_mib  # noqa: F401  (re-exported: the benchmarks import it from here)


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
