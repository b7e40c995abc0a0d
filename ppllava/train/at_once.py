"""Several trainings at once, each in a process of its own with a share of the cores.

The tiny models are small enough that torch's two intra-op threads leave part of a 2-core CPU idle:
four stage-2 variants trained two at a time, one thread each, took 1.16-1.25x less wall time than one
after another with two threads (benchmarks/at_once_bench.py, side by side; docs/benchmarks.md). The
notebooks train sets of independent variants (notebook 03's pooling rows, 07's needle rows, 06's DPO
controls), so `Recipe.at_once` collects what a block asks for and hands it here.

A job runs what `python -m ppllava.train <its config>` runs, with its share of the threads, in a process
forked from a server that has imported the trainer once (multiprocessing's forkserver): a fresh process
per job, as a spawned one, without paying the trainer's imports (about 7 s) per job; notebooks 03 and 07
train 27 jobs this way. It starts once no unfinished job writes the model it starts from (`init_from`), so
a set may hold a variant and the rows that start from it. Its output goes to `<run_dir>/train.log`. A
failed job lets the running ones finish, starts no other, then raises naming the job and its log.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ppllava.progress import PROGRESS_ENV
from ppllava.train.config import TrainConfig

JOB_CONFIG = ".at_once.yaml"  # the job's config in its run directory, removed when the job succeeds
POLL_S = 0.5


@dataclass
class Job:
    """One training: its name (for messages and timings) and its config."""

    name: str
    config: TrainConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)

    @property
    def output(self) -> Path:
        return self.run_dir / "model"

    @property
    def log(self) -> Path:
        return self.run_dir / "train.log"


def default_jobs() -> int:
    """2 on a machine without CUDA that has at least 2 cores, else 1 (a GPU trains one run at a time)."""
    return 2 if not torch.cuda.is_available() and (os.cpu_count() or 1) >= 2 else 1


def train_command(job: Job, config_path: Path) -> List[str]:
    """`python -m ppllava.train <config>`: what a forked job runs (`_train_forked`), as a command."""
    return [sys.executable, "-m", "ppllava.train", str(config_path)]


def _train_forked(config_path: str, log_path: str, threads: int, env: Dict[str, str]) -> None:
    """A job's process: `python -m ppllava.train <config>` (`ppllava.train.run.main`) with its output in
    its log, the environment `env` (the scheduler's at the job's start, not the server's at its own) and
    `threads` intra-op threads, set before any work as OMP_NUM_THREADS sets them at a process's start."""
    with open(log_path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    os.environ.clear()
    os.environ.update(env)
    torch.set_num_threads(threads)
    from ppllava.train.run import main

    try:
        main([config_path])
    finally:  # a forked child leaves with os._exit, which would drop what is still buffered
        sys.stdout.flush()
        sys.stderr.flush()


class _Forked:
    """A forked job with the part of subprocess.Popen's interface the scheduler uses."""

    def __init__(self, process):
        self.process = process

    def poll(self) -> Optional[int]:
        return None if self.process.is_alive() else self.process.exitcode

    def terminate(self) -> None:
        self.process.terminate()

    def wait(self) -> None:
        self.process.join()


def _forkserver():
    """The context whose server imports the trainer once; it starts with the first job and serves every
    later one of this process (forking after torch's thread pool has started would not be safe: the server
    only imports)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["ppllava.train.run"])
    return ctx


def _starts_from(job: Job) -> Optional[Path]:
    return Path(job.config.init_from).resolve() if job.config.init_from else None


def train_jobs(jobs: Sequence[Job], at_once: int, threads: Optional[int] = None,
               command: Optional[Callable[[Job, Path], List[str]]] = None) -> Dict[str, float]:
    """Train `jobs`, at most `at_once` at a time, each with `threads` intra-op threads (default: the
    cores shared out, at least 1); returns each job's wall seconds (they overlap: their sum is not the
    time taken). Each job is forked from the trainer server, or, with `command(job, config_path)`, runs
    that command as a subprocess (`train_command` is the same training; tests give a stand-in)."""
    if at_once < 1:
        raise ValueError(f"at_once must be >= 1, got {at_once}")
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"jobs must have distinct names, got {names}")
    outputs = [job.output.resolve() for job in jobs]
    if len(set(outputs)) != len(outputs):
        raise ValueError("two jobs write the same model directory: " + ", ".join(str(o) for o in outputs))
    threads = threads or max(1, (os.cpu_count() or 1) // at_once)
    pending = list(jobs)
    running: Dict[str, Tuple[int, Job, object, Optional[IO]]] = {}  # name -> (slot, job, process, log file)
    started: Dict[str, float] = {}
    seconds: Dict[str, float] = {}
    failed: List[str] = []
    progress = os.environ.get(PROGRESS_ENV)
    try:
        while pending or running:
            unfinished = {j.output.resolve() for j in pending} | {r[1].output.resolve() for r in running.values()}
            ready = [job for job in pending if _starts_from(job) not in unfinished]
            if not running and not ready:
                raise ValueError("these jobs start from each other's models in a cycle: " + ", ".join(j.name for j in pending))
            while ready and len(running) < at_once and not failed:
                job = ready.pop(0)
                pending.remove(job)
                slot = min(set(range(at_once)) - {r[0] for r in running.values()})
                started[job.name] = time.perf_counter()
                running[job.name] = (slot, job, *_start(job, slot, threads, progress, command))
            time.sleep(POLL_S)
            for name, (slot, job, process, log) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[name]
                if log is not None:
                    log.close()
                if progress:  # a killed trainer leaves its state behind
                    Path(f"{progress}.{slot}").unlink(missing_ok=True)
                seconds[name] = time.perf_counter() - started[name]
                if code == 0 and (job.output / "config.yaml").exists():
                    (job.run_dir / JOB_CONFIG).unlink(missing_ok=True)
                else:
                    failed.append(f"{name} (exit code {code}; its log: {job.log})\n{_tail(job.log)}")
            if failed and not running:
                break
    finally:
        for _, _, process, log in running.values():  # interrupted (or a bug here): leave no training behind
            process.terminate()
            process.wait()
            if log is not None:
                log.close()
        for slot in range(at_once if progress else 0):
            Path(f"{progress}.{slot}").unlink(missing_ok=True)
    if failed:
        raise RuntimeError("training failed: " + "\n".join(failed) +
                           (f"\nnot started: {', '.join(j.name for j in pending)}" if pending else ""))
    # In the jobs' order, not the order they finished in: callers name a block by these keys (Recipe.at_once).
    return {job.name: seconds[job.name] for job in jobs}


def _start(job: Job, slot: int, threads: int, progress: Optional[str], command) -> Tuple[object, Optional[IO]]:
    job.run_dir.mkdir(parents=True, exist_ok=True)
    config_path = job.run_dir / JOB_CONFIG
    job.config.to_yaml(config_path)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if progress:  # one progress file per slot; ppllava.progress.status_line shows them side by side
        env[PROGRESS_ENV] = f"{progress}.{slot}"
    if command is None:
        process = _forkserver().Process(target=_train_forked, args=(str(config_path), str(job.log), threads, env),
                                        name=f"train {job.name}")
        process.start()
        return _Forked(process), None
    log = open(job.log, "w")
    return subprocess.Popen(command(job, config_path), stdout=log, stderr=subprocess.STDOUT, env=env), log


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])
