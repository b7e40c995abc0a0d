"""Training progress as a small JSON file, for a process that shows it elsewhere: its name, its
format and how it reads.

The main job (ppllava.run_notebooks) trains the recipe's stages inside notebook kernels, where a
progress bar only floods the executed notebook. It names a file in PPLLAVA_PROGRESS_FILE; the
kernel's trainers (ppllava.train.run) then write their state there with
`ppllava.train.progress.ProgressFile`, and the job's cell bar shows it: "training sft2 1200/4690
steps, ~3 min left". This half imports no Lightning (4.5 s), so the main job starts without it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Optional, Union

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
    """describe() of the state in `path`, and of `path`.0, `path`.1, ... (the trainings of
    `Recipe.at_once`, one file per process) joined by " | "; "" when nothing is training."""
    if not path:
        return ""
    path = Path(path)
    files = [path, *sorted(path.parent.glob(f"{path.name}.[0-9]*"))]  # (no directory: no siblings)
    return " | ".join(line for line in map(_state_line, files) if line)


def _state_line(path: Path) -> str:
    """describe() of the state in `path`, or "" when nothing is training: no file (none yet, or the
    stage ended) or one that does not read as a state. Never raises for the file's content: the line
    is decoration, and the run it decorates must go on."""
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
