"""The writing half of `ppllava.progress`: a Lightning callback that keeps the progress file current."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Dict, Optional, Union

import lightning as L

from ppllava.progress import eta_seconds


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
