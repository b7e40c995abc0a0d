"""Every tutorial notebook, executed through papermill in smoke mode, with its metrics checked."""
import json

import nbformat
import pytest

from ppllava.run_notebooks import execute, notebook_paths, write_index

NOTEBOOKS = notebook_paths()


def check_00_operations(m):
    assert m["relevance_mass_on_object"] > 0.9
    longest = m["needle"][-1]
    assert longest["mean (adaptive): object share"] == pytest.approx(8 / (9 * longest["frames"]), rel=1e-5)
    assert longest["prompt, softmax: object share"] > 0.9
    assert m["uniform_vs_avg_pool3d_max_abs_diff"] < 1e-5
    assert m["extended_positions"] == 248


CHECKS = {"00_operations": check_00_operations}


def test_every_notebook_has_a_check_and_a_parameters_cell():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        assert path.stem in CHECKS, f"{path.name} has no metrics check in tests/test_notebooks.py"
        nb = nbformat.read(path, as_version=4)
        first_code = next(c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", []))
        assert "smoke = False" in first_code.source and "out_dir" in first_code.source
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} is committed with outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, tmp_path):
    entry = execute(path, tmp_path, smoke=True)
    assert entry["status"] == "ok", entry["error"]
    metrics = json.loads((tmp_path / path.stem / "metrics.json").read_text())
    CHECKS[path.stem](metrics)
    assert entry["figures"], "a tutorial notebook should save at least one figure"
    index = write_index(tmp_path, [entry])
    assert path.stem in index.read_text()
