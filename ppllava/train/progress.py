"""Training progress as a small JSON file, for a process that shows it elsewhere.

The main job (ppllava.run_notebooks) trains the recipe's stages inside notebook kernels, where a
progress bar only floods the executed notebook. It names a file in PPLLAVA_PROGRESS_FILE; the
kernel's trainers (ppllava.train.run) then write their state there with ProgressFile, and the job's
cell bar shows it: "training sft2 1200/4690 steps, ~3 min left".
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Dict, Optional, Union

import lightning as L

PROGRESS_ENV = "PPLLAVA_PROGRESS_FILE"


def eta_seconds(step: int, max_steps: Optional[float], elapsed_s: float, first_step: int = 0) -> Optional[float]:
    """Seconds left at the rate of the steps done since `first_step` (a resumed run's start); None
    before the first step or when the number of steps is unknown."""
    done = step - first_step
    if done <= 0 or max_steps is None or not math.isfinite(max_steps):
        return None
    return max(0.0, (max_steps - step) * elapsed_s / done)


def describe(state: Dict) -> str:
    """One line for a bar: 'training sft2 1200/4690 steps, ~3 min left'. A state of another shape
    raises KeyError or TypeError."""
    line = f"training {state['stage']} {state['step']}/{state['max_steps'] or '?'} steps"
    eta = state.get("eta_s")
    if eta is None:
        return line
    return line + (f", ~{round(eta)} s left" if eta < 60 else f", ~{round(eta / 60)} min left")


def status_line(path: Union[str, Path, None]) -> str:
    """describe() of the state in `path`, or "" when nothing is training: no file (none yet, or the
    stage ended) or one that does not read as a state. Never raises for the file's content: the line
    is decoration, and the run it decorates must go on."""
    if not path:
        return ""
    try:
        state = json.loads(Path(path).read_bytes())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return ""
    if not isinstance(state, dict):
        return ""
    try:
        return describe(state)
    except (KeyError, TypeError, ValueError):  # ValueError: round(NaN), which json reads from "NaN"
        return ""


class ProgressFile(L.Callback):
    """Writes {"stage", "step", "max_steps", "elapsed_s", "eta_s"} to `path` at most every `every_s`
    seconds while training, and removes the file when training ends or fails. Each write replaces
    the file whole (a temporary file beside it, then os.replace), so a reader never sees half of one."""

    def __init__(self, path: Union[str, Path], stage: str, every_s: float = 1.0):
        self.path, self.stage, self.every_s = Path(path), stage, every_s
        self._start = self._last = 0.0
        self._first_step = 0
        self._max_steps: Optional[float] = None

    def state(self, step: int, now: float) -> Dict:
        elapsed = now - self._start
        eta = eta_seconds(step, self._max_steps, elapsed, self._first_step)
        max_steps = int(self._max_steps) if self._max_steps is not None and math.isfinite(self._max_steps) else None
        return {"stage": self.stage, "step": step, "max_steps": max_steps, "elapsed_s": round(elapsed, 1),
                "eta_s": None if eta is None else round(eta, 1)}

    def _write(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:  # one writer under DDP
            return
        self._last = time.monotonic()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.state(trainer.global_step, self._last)))
        os.replace(tmp, self.path)

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()
        self._first_step = trainer.global_step  # a resumed run's rate counts its own steps only
        self._max_steps = float(trainer.estimated_stepping_batches)
        self._write(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self._write(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._remove(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._remove(trainer)  # or the bar would show a stage that no longer trains

    def _remove(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero:
            self.path.unlink(missing_ok=True)
