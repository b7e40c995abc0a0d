"""The exercise notebooks (run with their solutions and as given to students, through papermill), the
generator's staleness check, and the checks' messages on deliberately wrong functions."""
import json

import nbformat
import papermill
import pytest
import torch
import torch.nn.functional as F

from ppllava import exercise_checks as ec
from ppllava.data.conversation import encode_conversation
from ppllava.exercises import EXERCISES, ROOT, SOLUTIONS, ExerciseError, exercise_cells, generate, main, stub_source
from ppllava.ops import prompt_relevance

SOURCES = sorted(SOLUTIONS.glob("*.ipynb"))
IDS = [p.stem for p in SOURCES]


def run(notebook, out):
    papermill.execute_notebook(str(notebook), str(out), cwd=str(ROOT), progress_bar=False, kernel_name="python3")


def test_the_student_notebooks_are_generated_from_the_solutions_and_up_to_date(tmp_path):
    assert len(SOURCES) == 3, "one exercise notebook per lesson of docs/teaching.md"
    written = generate(tmp_path)
    assert sorted(p.name for p in EXERCISES.glob("*.ipynb")) == sorted(p.name for p in written), \
        "notebooks/exercises/ and notebooks/solutions/ hold different names: run `python -m ppllava.exercises`"
    for path in written:
        assert path.read_bytes() == (EXERCISES / path.name).read_bytes(), \
            f"notebooks/exercises/{path.name} is stale or edited by hand: run `python -m ppllava.exercises`"
    assert main(["--check"]) == 0


def test_the_exercises_cover_the_method_core():
    functions = {stub.split("(")[0].removeprefix("def ")
                 for p in SOURCES for nb in [nbformat.read(p, as_version=4)]
                 for stub in (nb.cells[i].source for i in exercise_cells(nb))}
    assert functions == {"axis_geometry", "pool_window", "relevance_map", "extend_positions", "dpo_sigmoid_loss",
                         "answer_only_labels"}


@pytest.mark.parametrize("solution", SOURCES, ids=IDS)
def test_with_the_solutions_every_check_passes(solution, tmp_path):
    run(solution, tmp_path / "out.ipynb")
    nb = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    said = {c.source: "".join(o.get("text", "") for o in c.outputs) for c in nb.cells if c.cell_type == "code"}
    for i in exercise_cells(nb):
        name = nb.cells[i].source.split("(")[0].removeprefix("def ")
        check = next(s for s in said if s.startswith("check_") and f"({name})" in s)
        assert f"{name}: right on all" in said[check], said[check]


@pytest.mark.parametrize("solution", SOURCES, ids=IDS)
def test_as_given_to_students_the_first_check_fails_with_the_stub_task(solution, tmp_path):
    student = EXERCISES / solution.name
    nb = nbformat.read(student, as_version=4)
    first = exercise_cells(nb)[0]
    task = nb.cells[first].metadata["exercise"]["task"]
    with pytest.raises(papermill.PapermillExecutionError) as err:
        run(student, tmp_path / "out.ipynb")
    assert err.value.ename == "NotImplementedError" and err.value.evalue == task
    check = next(c for c in nb.cells[first + 1:] if c.cell_type == "code")
    assert err.value.source == check.source  # the check cell, not the stub's definition, fails


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


# --- the generator refuses solution notebooks it cannot turn into exercises --------------------------


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
    ([code("e", GOOD, tags=["exercise"]), code("c", "check_f(f)")], "needs metadata exercise.task"),
    ([code("e", GOOD, tags=["exercise"], exercise={"task": "t"}), code("c", "f(1)")], "the next code cell must check f"),
    ([code("e", GOOD, exercise={"task": "t"})], "no cell is tagged 'exercise'"),
], ids=["no task", "no check", "no tag"])
def test_the_generator_names_the_notebook_and_cell_it_refuses(tmp_path, cells, message):
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    (solutions / "bad.ipynb").write_text(json.dumps(notebook_with(cells)))
    with pytest.raises(ExerciseError, match=message) as err:
        generate(tmp_path / "out", solutions)
    assert "bad.ipynb" in str(err.value) and not (tmp_path / "out").exists()


def test_the_cli_refuses_a_bad_solution_notebook_with_one_line(tmp_path, capsys):
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    (solutions / "bad.ipynb").write_text(json.dumps(notebook_with([code("e", "x = 1", tags=["exercise"],
                                                                        exercise={"task": "t"})])))
    with pytest.raises(SystemExit) as exit_:
        main(["--solutions", str(solutions), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "bad.ipynb, cell e: an exercise cell holds exactly one function definition" in err


def test_the_check_flag_names_a_stale_file(tmp_path, capsys):
    generate(tmp_path)
    stale = tmp_path / SOURCES[0].name
    stale.write_text(stale.read_text().replace("NotImplementedError", "NotImplementedError ", 1))
    assert main(["--check", "--out", str(tmp_path)]) == 1
    assert f"{stale}: differs from its solution notebook's student version" in capsys.readouterr().err
