"""Peak memory of one call, measured in a fresh process (the benchmarks and notebook 07 use it)."""
from __future__ import annotations

import multiprocessing as mp
from typing import Callable

import torch


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_child(setup, device, queue) -> None:
    fn = setup()  # builds its inputs; only what `fn` allocates beyond them is measured
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        queue.put((torch.cuda.max_memory_allocated() - base) / 2**20)
    else:
        # Linux: writing 5 to clear_refs resets the high-water mark VmHWM to the current RSS.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _proc_status_kib("VmRSS")
        fn()
        queue.put((_proc_status_kib("VmHWM") - base) / 1024)


def peak_extra_mib(setup: Callable[[], Callable[[], object]], device: str) -> float:
    """Peak memory (MiB) of one call of `setup()`'s function beyond what `setup` built, measured
    in a fresh process (CPU: peak resident memory; CUDA: the allocator's peak). `setup` must be
    picklable: a module-level function or a functools.partial of one.

    The process is forked from a server that has imported `setup`'s module (torch with it) once: a
    fresh address space each call, as a spawned process, without paying the imports each time (notebook
    07's fourteen rows: 21.5 s spawned against 6.4 s from the server for four of them, 2026-11-30)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([getattr(setup, "func", setup).__module__])  # used when the server starts
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(setup, device, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value
