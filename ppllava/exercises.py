"""Make the students' exercise notebooks from the lesson notebooks.

    python -m ppllava.exercises            # notebooks/*.ipynb with exercise cells -> notebooks/exercises/, same names
    python -m ppllava.exercises --check    # write nothing; exit 1 naming every stale or stray file
    python -m ppllava.exercises --lessons my/lessons --out my/exercises

A lesson notebook marks the method's core: a code cell tagged `exercise` holds one function
(signature, docstring, solution) and its metadata `exercise.task` says the task in words; the next
code cell checks the function with `ppllava.exercise_checks`. Every notebook of the lessons folder
with such a cell gets a student version of the same name: the same notebook, which goes on into the
lesson's experiment once the student's functions pass, with each exercise's solution replaced by
`raise NotImplementedError(task)`. It is generated, never edited by hand: the tests regenerate it
and fail if the committed one differs.
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
LESSONS = ROOT / "notebooks"
EXERCISES = LESSONS / "exercises"
TAG = "exercise"


class ExerciseError(ValueError):
    """A lesson notebook the generator cannot turn into an exercise; the message names the cell."""


def exercise_cells(nb) -> List[int]:
    """Indices of the cells tagged `exercise`."""
    return [i for i, c in enumerate(nb.cells) if TAG in c.metadata.get("tags", [])]


def marked(cell) -> bool:
    """Whether a cell is meant as an exercise: tagged, or carrying exercise metadata (a forgotten tag)."""
    return TAG in cell.metadata.get("tags", []) or TAG in cell.metadata


def lesson_notebooks(lessons: Path = LESSONS) -> List[Path]:
    """The notebooks directly in `lessons` with at least one cell marked as an exercise."""
    return [p for p in sorted(lessons.glob("*.ipynb")) if any(marked(c) for c in nbformat.read(p, as_version=4).cells)]


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


def student_version(lesson: Path) -> str:
    """The student notebook of one lesson notebook, as the text to write."""
    nb = nbformat.read(lesson, as_version=4)
    nbformat.validate(nb)  # ids included: a generated copy of a cell without one would fail later
    name = lesson.relative_to(ROOT) if lesson.is_relative_to(ROOT) else lesson
    with_outputs = [c.id for c in nb.cells if c.cell_type == "code" and (c.outputs or c.execution_count)]
    if with_outputs:
        raise ExerciseError(f"{name}: clear the outputs first (cells {with_outputs}); they would give the solutions away")
    untagged = next((c for c in nb.cells if marked(c) and TAG not in c.metadata.get("tags", [])), None)
    if untagged is not None:
        raise ExerciseError(f"{name}, cell {untagged.id}: it has exercise metadata but no tag {TAG!r}; "
                            "tag it, or drop the metadata")
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


def generate(out_dir: Path = EXERCISES, lessons: Path = LESSONS) -> Dict[Path, str]:
    """Write the student version of every lesson notebook with exercises to out_dir; returns {path: text}."""
    if out_dir.resolve() == lessons.resolve():
        raise ExerciseError(f"{out_dir}: the student versions would overwrite their lesson notebooks; choose another --out")
    sources = lesson_notebooks(lessons)
    if not sources:
        raise ExerciseError(f"no notebook in {lessons} has a cell tagged {TAG!r}")
    written = {out_dir / s.name: student_version(s) for s in sources}  # all made before any is written
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, text in written.items():
        path.write_text(text)
    return written


def stale(out_dir: Path = EXERCISES, lessons: Path = LESSONS) -> List[str]:
    """Why the student notebooks in out_dir differ from a fresh generation (empty when they do not)."""
    fresh = {p.name: student_version(p) for p in lesson_notebooks(lessons)}
    problems = [f"{out_dir / n}: missing" for n in fresh if not (out_dir / n).exists()]
    problems += [f"{out_dir / n}: differs from its lesson notebook's student version" for n in fresh
                 if (out_dir / n).exists() and (out_dir / n).read_text() != fresh[n]]
    problems += [f"{p}: has no lesson notebook with exercises in {lessons}" for p in sorted(out_dir.glob("*.ipynb"))
                 if p.name not in fresh]
    return problems


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the student notebooks are stale")
    parser.add_argument("--out", type=Path, default=EXERCISES, help=f"where the student notebooks go (default {EXERCISES})")
    parser.add_argument("--lessons", type=Path, default=LESSONS,
                        help=f"the lesson notebooks, e.g. a teacher's own kept outside the repository (default {LESSONS})")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = stale(args.out, args.lessons)
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print("run `python -m ppllava.exercises` to regenerate them", file=sys.stderr)
            return 1 if problems else 0
        for path in generate(args.out, args.lessons):
            print(f"[ppllava] wrote {path}")
    except ExerciseError as err:  # a lesson notebook out of shape: one line naming it, not a traceback
        parser.exit(2, f"ppllava.exercises: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
