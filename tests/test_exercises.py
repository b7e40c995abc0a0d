"""The exercises marked in the lesson notebooks: their student versions generated and up to date, each
run through papermill as given to students and, cut after its exercises, with the solutions in place;
the checks' messages on deliberately wrong functions; the generator's refusals."""
import copy
import json
import re

import nbformat
import papermill
import pytest
import torch
import torch.nn.functional as F

from ppllava import exercise_checks as ec
from ppllava.data.conversation import encode_conversation
from ppllava.exercises import EXERCISES, ROOT, ExerciseError, exercise_cells, generate, lesson_notebooks, main, stub_source
from ppllava.ops import prompt_relevance

SOURCES = lesson_notebooks()
IDS = [p.stem for p in SOURCES]


def function_name(cell):
    return cell.source.split("(")[0].removeprefix("def ")


def check_cell(nb, i):
    """The check of the exercise cell nb.cells[i]: the next code cell."""
    return next(c for c in nb.cells[i + 1:] if c.cell_type == "code")


def run(notebook, out, tmp_path):
    """Execute `notebook` through papermill in smoke mode, its out_dir and artifacts_dir (those it has) under tmp_path."""
    nb = nbformat.read(notebook, as_version=4)
    parameters = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    given = {"smoke": True, **{name: str(tmp_path / name) for name in ("out_dir", "artifacts_dir")
                               if re.search(rf"^{name} =", parameters, re.M)}}
    papermill.execute_notebook(str(notebook), str(out), parameters=given, cwd=str(ROOT), progress_bar=False,
                               kernel_name="python3")


def exercise_part(nb):
    """The lesson notebook cut after its last exercise's check cell, keeping the "Use it" markdown and code
    cell right after that check.

    tests/test_notebooks.py already runs every lesson notebook whole in smoke mode, training included (minutes
    for 02 to 06); running them whole again here would only repeat that. What this file adds is that every
    check passes on the solutions, and that part comes before the lesson's recipe setup, so it runs in
    seconds. The last "use it" cell stays because it too calls a solution (the earlier ones are inside the part)."""
    end = exercise_cells(nb)[-1] + 1
    end = next(i for i in range(end, len(nb.cells)) if nb.cells[i].cell_type == "code")  # the last check
    use = nb.cells[end + 1:end + 3]
    if [c.cell_type for c in use] == ["markdown", "code"] and use[0].source.startswith("Use it"):
        end += 2
    part = copy.deepcopy(nb)
    part.cells = part.cells[:end + 1]
    return part


def test_the_student_notebooks_are_generated_from_the_lessons_and_up_to_date(tmp_path):
    assert [p.name for p in SOURCES] == ["00_operations.ipynb", "02_alignment.ipynb", "04_context_extension.ipynb",
                                         "05_sft.ipynb", "06_dpo.ipynb"], "the lessons with exercises of docs/teaching.md"
    written = generate(tmp_path)
    assert sorted(p.name for p in EXERCISES.glob("*.ipynb")) == sorted(p.name for p in written), \
        "notebooks/exercises/ holds a stray or lacks a lesson's student version: run `python -m ppllava.exercises`"
    for path in written:
        assert path.read_bytes() == (EXERCISES / path.name).read_bytes(), \
            f"notebooks/exercises/{path.name} is stale or edited by hand: run `python -m ppllava.exercises`"
    assert main(["--check"]) == 0


def test_the_exercises_cover_the_method_core():
    functions = {p.stem: {function_name(nb.cells[i]) for i in exercise_cells(nb)}
                 for p in SOURCES for nb in [nbformat.read(p, as_version=4)]}
    assert functions == {"00_operations": {"axis_geometry", "pool_window"}, "02_alignment": {"relevance_map"},
                         "04_context_extension": {"extend_positions"}, "05_sft": {"answer_only_labels"},
                         "06_dpo": {"dpo_sigmoid_loss"}}


@pytest.mark.parametrize("lesson", SOURCES, ids=IDS)
def test_with_the_solutions_every_check_passes(lesson, tmp_path):
    part = exercise_part(nbformat.read(lesson, as_version=4))
    assert not any("Recipe(" in c.source for c in part.cells), "the exercises must come before the lesson's recipe"
    nbformat.write(part, tmp_path / lesson.name)
    run(tmp_path / lesson.name, tmp_path / "out.ipynb", tmp_path)
    nb = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    for i in exercise_cells(nb):
        said = "".join(o.get("text", "") for o in check_cell(nb, i).outputs)
        assert f"{function_name(nb.cells[i])}: right on all" in said, said


@pytest.mark.parametrize("lesson", SOURCES, ids=IDS)
def test_as_given_to_students_the_first_check_fails_with_the_stub_task(lesson, tmp_path):
    student = EXERCISES / lesson.name
    nb = nbformat.read(student, as_version=4)
    first = exercise_cells(nb)[0]
    task = nb.cells[first].metadata["exercise"]["task"]
    with pytest.raises(papermill.PapermillExecutionError) as err:
        run(student, tmp_path / "out.ipynb", tmp_path)
    assert err.value.ename == "NotImplementedError" and err.value.evalue == task
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    failed = [c.id for c in executed.cells if c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs)]
    assert failed == [check_cell(nb, first).id]  # the first check cell, not the stub's definition nor a cell before


# --- the checks say what is wrong ------------------------------------------------------------------


def right_pool(x, s, temperature=0.01):
    return torch.softmax(s / temperature, 0) @ x


def failure(check, fn):
    with pytest.raises(ec.CheckFailed) as err:
        check(fn)
    return str(err.value)


def test_a_wrong_shape_is_named_with_both_shapes():
    message = failure(ec.check_pool_window, lambda x, s, temperature=0.01: right_pool(x, s, temperature)[None])
    assert "shape (1, 8), expected (8,)" in message and "case 1 of 5" in message
    message = failure(ec.check_relevance_map, lambda patch_embeds, text_embeds, logit_scale: patch_embeds.sum(-1))
    assert "must return 2 values (r, s), got Tensor" in message


def test_wrong_values_are_named_with_the_largest_difference_and_where():
    message = failure(ec.check_pool_window, lambda x, s, temperature=0.01: torch.softmax(s, 0) @ x)  # no temperature
    assert "values differ at 8 of 8 positions; the largest difference" in message
    assert "is at [" in message and "got " in message and "expected " in message
    # s as one softmax over the whole batch instead of one per video: wrong for B > 1 only.
    def one_softmax(patch_embeds, text_embeds, logit_scale):
        r = torch.einsum("bthwc,bc->bthw", F.normalize(patch_embeds, dim=-1), F.normalize(text_embeds, dim=-1))
        return r, torch.softmax(logit_scale.exp() * r.flatten(), 0).view_as(r)
    message = failure(ec.check_relevance_map, one_softmax)
    assert "case 2 of 4 (B=2" in message and message.split("\n")[1].strip().startswith("s: values differ")


def test_a_missing_or_wrong_gradient_is_named_with_its_input():
    message = failure(ec.check_pool_window, lambda x, s, temperature=0.01: right_pool(x, s.detach(), temperature))
    assert "gradient: none reaches `s`" in message
    message = failure(ec.check_pool_window, lambda x, s, temperature=0.01: right_pool(x, s, temperature).detach())
    assert "the output carries none (no grad_fn)" in message

    def straight_through(x, s, temperature=0.01):  # right values, gradient of the identity in s
        weights = torch.softmax(s / temperature, 0)
        return (weights.detach() + s - s.detach()) @ x
    message = failure(ec.check_pool_window, straight_through)
    assert "gradient with respect to `s`: values differ" in message
    message = failure(ec.check_relevance_map, lambda patch_embeds, text_embeds, logit_scale: prompt_relevance(
        patch_embeds, text_embeds, logit_scale.detach()))
    assert "none reaches `logit_scale`" in message


def test_an_overflow_is_named_as_a_non_finite_value():
    def naive(x, s, temperature=0.01):
        e = torch.exp(s / temperature)
        return (e / e.sum()) @ x
    message = failure(ec.check_pool_window, naive)
    assert "case 5 of 5" in message and "non-finite value(s) where the kit's are finite" in message

    def log_of_sigmoid(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
        h = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
        return -torch.log(torch.sigmoid(beta * h)).mean()
    message = failure(ec.check_dpo_sigmoid_loss, log_of_sigmoid)
    assert "case 4 of 4" in message and "non-finite" in message and "inf" in message


def test_the_dpo_loss_must_be_the_mean_over_pairs():
    per_pair = lambda policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1: -F.logsigmoid(  # noqa: E731
        beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)))
    assert "output: shape (4,), expected ()" in failure(ec.check_dpo_sigmoid_loss, per_pair)


def test_geometry_and_label_mistakes_are_named():
    def true_division(size, output_size=None, kernel=None, stride=None):
        stride = kernel if stride is None else stride
        return (size - kernel) / stride + 1, kernel, stride
    assert "axis_geometry(size=24, kernel=3) returned O = 8.0 (float); every value must be an int" in failure(ec.check_axis_geometry, true_division)

    def forgets_o_is_1(size, output_size=None, kernel=None, stride=None):
        if output_size is None:
            stride = kernel if stride is None else stride
            return (size - kernel) // stride + 1, kernel, stride
        stride = size // output_size if stride is None else stride
        kernel = size - (output_size - 1) * stride if kernel is None else kernel
        return output_size, kernel, stride
    message = failure(ec.check_axis_geometry, forgets_o_is_1)
    assert "axis_geometry(size=" in message and "wrong stride d" in message

    def labels_everything(turns, tokenizer, template="vicuna_v1"):
        ids, _ = encode_conversation(turns, tokenizer, template)
        return ids, list(ids)
    message = failure(ec.check_answer_only_labels, labels_everything)
    assert "labels differ first at position 0 (the token '<s>'): got 1 ('<s>'), expected -100 (IGNORE)" in message


def test_a_stub_reaches_the_notebook_as_its_task():
    def stub(x, s, temperature=0.01):
        raise NotImplementedError("Exercise 2: write pool_window")
    with pytest.raises(NotImplementedError, match="Exercise 2: write pool_window"):
        ec.check_pool_window(stub)


# --- the generator refuses lesson notebooks it cannot turn into exercises --------------------------


def test_a_stub_keeps_the_signature_and_docstring_and_drops_the_solution():
    source = 'def f(a, b=2):\n    """Add them."""\n    total = a + b\n    return total'
    assert stub_source(source, "Exercise: add", "here") == (
        'def f(a, b=2):\n    """Add them."""\n    raise NotImplementedError(\'Exercise: add\')')
    with pytest.raises(ExerciseError, match="cell x: an exercise cell holds exactly one function definition"):
        stub_source("import torch\n" + source, "t", "cell x")
    with pytest.raises(ExerciseError, match="needs a docstring"):
        stub_source("def f(a):\n    return a", "t", "cell x")


def notebook_with(cells):
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def code(cid, source, **metadata):
    return {"cell_type": "code", "id": cid, "metadata": metadata, "execution_count": None, "outputs": [], "source": source}


GOOD = 'def f(a):\n    """Return a."""\n    return a'


@pytest.mark.parametrize("cells, message", [
    ([code("e", GOOD, tags=["exercise"]), code("c", "check_f(f)")], "cell e: an exercise cell needs metadata exercise.task"),
    ([code("e", GOOD, tags=["exercise"], exercise={"task": "t"}), code("c", "f(1)")], "the next code cell must check f"),
    ([code("e", GOOD, exercise={"task": "t"}), code("c", "check_f(f)")], "cell e: it has exercise metadata but no tag"),
], ids=["no task", "no check", "no tag"])
def test_the_generator_names_the_notebook_and_cell_it_refuses(tmp_path, cells, message):
    lessons = tmp_path / "lessons"
    lessons.mkdir()
    (lessons / "bad.ipynb").write_text(json.dumps(notebook_with(cells)))
    with pytest.raises(ExerciseError, match=message) as err:
        generate(tmp_path / "out", lessons)
    assert "bad.ipynb" in str(err.value) and not (tmp_path / "out").exists()


def test_the_generator_skips_notebooks_without_exercises_and_refuses_to_overwrite_the_lessons(tmp_path):
    lessons = tmp_path / "lessons"
    lessons.mkdir()
    (lessons / "plain.ipynb").write_text(json.dumps(notebook_with([code("a", "x = 1")])))
    with pytest.raises(ExerciseError, match="no notebook in .* has a cell tagged 'exercise'"):
        generate(tmp_path / "out", lessons)
    (lessons / "good.ipynb").write_text(json.dumps(notebook_with([
        code("e", GOOD, tags=["exercise"], exercise={"task": "t"}), code("c", "check_f(f)")])))
    assert [p.name for p in generate(tmp_path / "out", lessons)] == ["good.ipynb"]
    with pytest.raises(ExerciseError, match="would overwrite their lesson notebooks"):
        generate(lessons, lessons)


def test_the_cli_refuses_a_bad_lesson_notebook_with_one_line(tmp_path, capsys):
    lessons = tmp_path / "lessons"
    lessons.mkdir()
    (lessons / "bad.ipynb").write_text(json.dumps(notebook_with([code("e", "x = 1", tags=["exercise"],
                                                                      exercise={"task": "t"})])))
    with pytest.raises(SystemExit) as exit_:
        main(["--lessons", str(lessons), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "bad.ipynb, cell e: an exercise cell holds exactly one function definition" in err


def test_the_check_flag_names_a_stale_and_a_stray_file(tmp_path, capsys):
    generate(tmp_path)
    stale = tmp_path / SOURCES[0].name
    stale.write_text(stale.read_text().replace("NotImplementedError", "NotImplementedError ", 1))
    (tmp_path / "lesson1_operations.ipynb").write_text(stale.read_text())
    assert main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{stale}: differs from its lesson notebook's student version" in err
    assert f"{tmp_path / 'lesson1_operations.ipynb'}: has no lesson notebook with exercises in" in err
