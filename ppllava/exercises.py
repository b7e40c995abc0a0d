"""Make the students' exercise notebooks from the solution notebooks.

    python -m ppllava.exercises            # notebooks/solutions/*.ipynb -> notebooks/exercises/*.ipynb
    python -m ppllava.exercises --check    # write nothing; exit 1 naming every stale or stray file
    python -m ppllava.exercises --solutions my/solutions --out my/exercises

In a solution notebook, a code cell tagged `exercise` holds one function (signature, docstring,
solution) and its metadata `exercise.task` says the task in words; the next code cell checks the
function with `ppllava.exercise_checks`. The student version is the same notebook with each
exercise's solution replaced by `raise NotImplementedError(task)`. It is generated, never edited
by hand: the tests regenerate it and fail if the committed one differs.
"""
from __future__ import annotations

import argparse
import ast
import copy
import sys
from pathlib import Path
from typing import Dict, List, Optional

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "notebooks" / "solutions"
EXERCISES = ROOT / "notebooks" / "exercises"
TAG = "exercise"


class ExerciseError(ValueError):
    """A solution notebook the generator cannot turn into an exercise; the message names the cell."""


def exercise_cells(nb) -> List[int]:
    """Indices of the cells tagged `exercise`."""
    return [i for i, c in enumerate(nb.cells) if TAG in c.metadata.get("tags", [])]


def task_of(cell, where: str) -> str:
    task = cell.metadata.get("exercise", {}).get("task")
    if not isinstance(task, str) or not task.strip():
        raise ExerciseError(f"{where}: an exercise cell needs metadata exercise.task (the task in words), got {task!r}")
    return task


def stub_source(source: str, task: str, where: str) -> str:
    """The cell's function with everything after its docstring replaced by raise NotImplementedError(task)."""
    tree = ast.parse(source)
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        found = [type(node).__name__ for node in tree.body]
        raise ExerciseError(f"{where}: an exercise cell holds exactly one function definition, found {found}")
    fn = tree.body[0]
    if ast.get_docstring(fn) is None or len(fn.body) < 2:
        raise ExerciseError(f"{where}: {fn.name} needs a docstring (the student's instructions) and a solution after it")
    docstring = fn.body[0]
    indent = " " * fn.body[1].col_offset
    kept = source.splitlines()[: docstring.end_lineno]  # comments above, the signature and the docstring
    return "\n".join([*kept, f"{indent}raise NotImplementedError({task!r})"])


def student_version(solution: Path) -> str:
    """The student notebook of one solution notebook, as the text to write."""
    nb = nbformat.read(solution, as_version=4)
    nbformat.validate(nb)  # ids included: a generated copy of a cell without one would fail later
    name = solution.relative_to(ROOT) if solution.is_relative_to(ROOT) else solution
    with_outputs = [c.id for c in nb.cells if c.cell_type == "code" and (c.outputs or c.execution_count)]
    if with_outputs:
        raise ExerciseError(f"{name}: clear the outputs first (cells {with_outputs}); they would give the solutions away")
    indices = exercise_cells(nb)
    if not indices:
        raise ExerciseError(f"{name}: no cell is tagged {TAG!r}")
    student = copy.deepcopy(nb)
    for i in indices:
        cell, where = nb.cells[i], f"{name}, cell {nb.cells[i].id}"
        student.cells[i].source = stub_source(cell.source, task_of(cell, where), where)
        function = ast.parse(cell.source).body[0].name
        following = next((c for c in nb.cells[i + 1:] if c.cell_type == "code"), None)
        if following is None or "check_" not in following.source or f"({function})" not in following.source:
            raise ExerciseError(f"{where}: the next code cell must check {function} (e.g. check_...({function}))")
    student.metadata["ppllava"] = {"generated_from": str(name), "by": "python -m ppllava.exercises"}
    return nbformat.writes(student) + "\n"


def generate(out_dir: Path = EXERCISES, solutions: Path = SOLUTIONS) -> Dict[Path, str]:
    """Write every solution notebook's student version to out_dir; returns {path: text}."""
    sources = sorted(solutions.glob("*.ipynb"))
    if not sources:
        raise ExerciseError(f"no solution notebooks in {solutions}")
    written = {out_dir / s.name: student_version(s) for s in sources}  # all made before any is written
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, text in written.items():
        path.write_text(text)
    return written


def stale(out_dir: Path = EXERCISES, solutions: Path = SOLUTIONS) -> List[str]:
    """Why the student notebooks in out_dir differ from a fresh generation (empty when they do not)."""
    fresh = {s.name: student_version(s) for s in sorted(solutions.glob("*.ipynb"))}
    problems = [f"{out_dir / n}: missing" for n in fresh if not (out_dir / n).exists()]
    problems += [f"{out_dir / n}: differs from its solution notebook's student version" for n in fresh
                 if (out_dir / n).exists() and (out_dir / n).read_text() != fresh[n]]
    problems += [f"{p}: has no solution notebook in {solutions}" for p in sorted(out_dir.glob("*.ipynb")) if p.name not in fresh]
    return problems


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the student notebooks are stale")
    parser.add_argument("--out", type=Path, default=EXERCISES, help=f"where the student notebooks go (default {EXERCISES})")
    parser.add_argument("--solutions", type=Path, default=SOLUTIONS,
                        help=f"the solution notebooks, e.g. a teacher's own kept outside the repository (default {SOLUTIONS})")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = stale(args.out, args.solutions)
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print("run `python -m ppllava.exercises` to regenerate them", file=sys.stderr)
            return 1 if problems else 0
        for path in generate(args.out, args.solutions):
            print(f"[ppllava] wrote {path}")
    except ExerciseError as err:  # a solution notebook out of shape: one line naming it, not a traceback
        parser.exit(2, f"ppllava.exercises: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
