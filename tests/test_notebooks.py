"""Every tutorial notebook, executed through papermill in smoke mode, with its metrics checked; the rendered
pages and the index a browser reads; every notebook valid under nbformat."""
import json
import os
import re
import warnings
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import papermill
import pytest
from PIL import Image

from ppllava.run_notebooks import HEADLINES, NOTEBOOKS as NOTEBOOK_DIR, README_FIGURES, TickingEngine, \
    copy_readme_figures, execute, headline_metrics, notebook_paths, write_index
from ppllava.progress import PROGRESS_ENV

NOTEBOOKS = notebook_paths()


def check_00_operations(m):
    assert m["relevance_mass_on_object"] > 0.9
    longest = m["needle"][-1]
    assert longest["mean (adaptive): object share"] == pytest.approx(8 / (9 * longest["frames"]), rel=1e-5)
    assert longest["prompt, softmax: object share"] > 0.9
    assert m["uniform_vs_avg_pool3d_max_abs_diff"] < 1e-5
    assert m["extended_positions"] == 248


def check_01_tour(m, patches=16):
    """`patches`: patch tokens per frame (16 in the tiny preset's 4 x 4 grid, 64 in tiny-p8's 8 x 8)."""
    every = 8 * patches  # an 8-frame clip's patch tokens
    assert m["visual_tokens"] == {"none": every, "temporal_mean": patches, "spatial": every // 4, "adaptive": 16, "prompt": 16}
    assert m["visual_tokens_answered"] == 16 and m["relevance_sum"] == pytest.approx(1, abs=1e-4)
    assert m["parameters_paper"] > 7e9 > m["parameters_tiny"] and m["answer"] is not None


def check_02_alignment(m):
    assert set(m["pointing"]) == {"fine-grained", "global"} and all(0 <= v <= 1 for v in m["pointing"].values())
    assert m["pairs"] > 0 and m["peak_s"]["tau_1000"] >= m["peak_s"]["tau_1"] and m["learned_tau"] > 0
    for tower in ("fine-grained", "global"):
        forms = m["pointing_by_prompt"][tower]
        assert set(forms) == {"full", "shape", "colour", "question"} and all(0 <= v <= 1 for v in forms.values())


def check_03_pooling_ablations(m, patches=16):
    """`patches`: patch tokens per frame, as for check_01_tour."""
    every = 8 * patches  # an 8-frame clip's patch tokens
    tokens = {mode: r["tokens"] for mode, r in m["headline"].items()}
    assert tokens == {"prompt": 16, "none": every, "temporal_mean": patches, "spatial": every // 4, "adaptive": 16,
                      "prompt (oracle relevance)": 16}
    assert {mode: r["tokens"] for mode, r in m["from_stage2"].items()} == {"prompt": 16, "temporal_mean": patches, "adaptive": 16}
    budget = [r["tokens"] for k, r in m["ablations_inference_time"].items() if k.startswith("budget")]
    assert budget == [4, 8, 16, 32, 64]
    for r in [*m["headline"].values(), *m["from_stage2"].values(), *m["ablations_inference_time"].values()]:
        assert 0 <= r["video"] <= 1 and 0 <= r["all"] <= 1 and r["answers_per_s"] > 0
    # The compression zoo at 16 tokens: selection and merging keep 16; fastv reads them all before layer K, 16 after.
    zoo = m["zoo"]
    free = ("topk", "random", "fastv", "merge", "dominant")
    assert list(zoo) == ["prompt (trained)", "none (trained)", *(f"{k} (training-free)" for k in free),
                         "merge (trained)", "dominant (trained)"]
    for name, r in zoo.items():
        assert r["training"] == ("trained" if name.endswith("(trained)") else "training_free") and name.startswith(r["method"])
        assert r["model"] == ("sft1-none" if r["training"] == "training_free" else f"sft1-{r['method']}")
        tokens = {"none": (every, every), "fastv": (every, 16)}.get(r["method"], (16, 16))
        assert (r["tokens"], r["tokens_kept"]) == tokens, name
        text = r["prefill_tokens"] - r["tokens"]  # the video questions' text, the same in every row
        assert text > 0 and r["prefill_tokens_kept"] - r["tokens_kept"] == pytest.approx(text)
        assert text == pytest.approx(zoo["prompt (trained)"]["prefill_tokens"] - 16)
        for key in ("all", "video", "colour", "shape", "direction", "order"):
            assert r[key] is None or 0 <= r[key] <= 1, (name, key)
        assert r["answers_per_s"] > 0 and r["video_counts"]["all"][1] > 0
    assert zoo["fastv (training-free)"]["fastv_layer"] == 2 and "fastv_layer" not in zoo["topk (training-free)"]
    for mode in ("prompt", "none"):  # section 1's rows, not scored again
        assert zoo[f"{mode} (trained)"]["video"] == m["headline"][mode]["video"]


def check_04_context_extension(m):
    assert m["truncated_at_77"] == [False, True] and m["prompt_tokens"][0] < 77 < m["prompt_tokens"][-1]
    assert len(m["pointing"]) == 5 and all(0 <= v <= 1 for curve in m["pointing"].values() for v in curve)


def check_05_sft(m):
    assert 0 <= m["accuracy"]["all"] <= 1 and m["test_records"] > 0 and m["steps"] >= 1
    assert set(m["batches_per_kind"]) <= {"video", "image", "multi", "text"} and m["median_tokens_per_s"] > 0


def check_06_dpo(m):
    for side in ("before", "after", *m["controls"]):
        scores = m[side] if side in ("before", "after") else m["controls"][side]
        assert 0 <= scores["preference_accuracy"] <= 1 and 0 <= scores["hallucination_rate"] <= scores["error_rate"] <= 1
        assert scores["pairs"] > 0
    assert len(m["controls"]) == 2 and m["pair_counts"]["model"] + m["pair_counts"]["world"] > 0


def check_07_long_video(m, patches=16):
    """`patches`: patch tokens per frame, as for check_01_tour."""
    assert m["tokens_per_video"] == 16 and m["needle_tasks"] == ["recall", "order", "count"]
    for length in m["lengths"]:
        rows = [r for r in m["needle"] if r["frames"] == length]
        seeds = {(r["mode"], r["seed"]) for r in rows}
        twice = {"adaptive", "prompt"} if length in m["seed_lengths"] else set()
        assert seeds == {(mode, seed) for mode in ("temporal_mean", "adaptive", "prompt", "prompt (oracle relevance)")
                         for seed in ((0, 1) if mode in twice else (0,))}
        for r in rows:
            assert r["accuracy"] == r["hits"] / r["n"] and r["interval"][0] <= r["accuracy"] <= r["interval"][1]
            assert r["n"] == m["test_videos"] and len(r["by_depth"]) == 5
            assert [d["n"] for d in r["by_depth"]] == [m["test_videos"] // 5] * 5  # balanced over depth
            assert sum(d["hits"] for d in r["by_depth"]) == r["hits"]
            for task in ("order", "count"):  # asked by the same model on test videos of their own
                t = r[task]
                assert t["n"] == m["time_test_videos"] // 2 and t["accuracy"] == t["hits"] / t["n"]
                assert t["interval"][0] <= t["accuracy"] <= t["interval"][1]
    assert 0 <= m["relevance_on_needle_frames"] <= 1 + 1e-5
    # The compression zoo at the needle: training-free on 03's `none` model (fastv too, while all the video's patch
    # tokens fit the tiny LLM's 1,024 positions), trained where the rows above are; 16 tokens each, same test videos.
    zoo = m["needle_zoo"]
    assert zoo["frames"] in m["lengths"] and zoo["tokens"] == 16
    fits = ("fastv",) if patches * zoo["frames"] < 1024 else ()
    assert [(r["method"], r["training"]) for r in zoo["rows"]] == [
        *((k, "training-free") for k in ("topk", "random", "merge", "dominant", *fits)),
        *((k, "trained") for k in ("topk", "merge", "dominant"))]
    for r in zoo["rows"]:
        assert r["tokens_kept"] == 16 and r["tokens"] == (patches * zoo["frames"] if r["method"] == "fastv" else 16)
        assert r["model"] == ("sft1-none" if r["training"] == "training-free" else f"needle{zoo['frames']}-{r['method']}")
        assert r["n"] == m["test_videos"] and r["accuracy"] == r["hits"] / r["n"] and r["answers_per_s"] > 0
        assert r["interval"][0] <= r["accuracy"] <= r["interval"][1] and sum(d["hits"] for d in r["by_depth"]) == r["hits"]
    for length in m["lengths"]:
        focus = m["window_focus"][str(length)]
        assert {"mean", "softmax 0.01", "normalized (paper)"} <= set(focus)
        assert all(0 <= v <= 1 + 1e-5 for v in focus.values())
    cost = m["prefill_cost"]["rows"]
    assert {(r["mode"], r["way"]) for r in cost} == {(mode, way) for mode in ("none", "adaptive", "prompt")
                                                     for way in ("streamed", "one_shot")}
    assert all(r["ms"] > 0 and (r["peak_mib"] is None if m["smoke"] else r["peak_mib"] >= 0) for r in cost)
    # One margin for every length, chosen at the shortest: the smallest within 0.01 of the best focus there.
    shortest = str(min(m["lengths"]))
    assert m["pool_margin"]["chosen_at_frames"] == min(m["lengths"])
    # Map or reader: the two prompt rows at the shortest length, each scored with the other's map.
    cross = m["cross_read"]
    assert cross["frames"] == min(m["lengths"]) and cross["weighting"] == m["pool_margin"]["weighting"]
    assert (cross["prompt"]["map"], cross["oracle"]["map"]) == ("oracle", "model")
    assert all(r["n"] == m["test_videos"] and r["accuracy"] == r["hits"] / r["n"] for r in (cross["prompt"], cross["oracle"]))
    rule = m["pool_margin"]["weighting"]  # the rows' rule, "invariant" or "peak"; the focus of both is measured
    assert {k.split()[0] for k in m["window_focus"][shortest]} >= {"invariant", "peak"}
    of_rule = {float(k.split()[1]): v for k, v in m["window_focus"][shortest].items() if k.split()[0] == rule}
    assert m["pool_margin"]["margin"] == min(g for g, v in of_rule.items() if v >= max(of_rule.values()) - 0.01)
    # The ablation: the softmax temperature one would tune per length, the largest within 0.01 of that length's best.
    for length in m["lengths"]:
        softmax = {float(k.split()[1]): v for k, v in m["window_focus"][str(length)].items() if k.startswith("softmax")}
        assert m["tuned_temperature"][str(length)] == max(t for t, v in softmax.items() if v >= max(softmax.values()) - 0.01)


def check_08_chat(m):
    assert m["turns"] > m["scored_questions"] > 0 and 0 <= m["scored_correct"] <= m["scored_questions"]
    assert all(s == pytest.approx(1, abs=1e-4) for s in m["relevance_sums"])


def check_09_real_checkpoints(m):
    assert m["checked"] == "tiny checkpoints in the real formats"
    assert m["parity_max_abs_logit_diff"] < 1e-4 and m["released_clip_differs"] is True
    assert m["text_context"] == 248 and m["visual_tokens"] < m["video_frames"] * 16


CHECKS = {"00_operations": check_00_operations, "01_tour": check_01_tour, "02_alignment": check_02_alignment,
          "03_pooling_ablations": check_03_pooling_ablations, "04_context_extension": check_04_context_extension,
          "05_sft": check_05_sft, "06_dpo": check_06_dpo, "07_long_video": check_07_long_video, "08_chat": check_08_chat,
          "09_real_checkpoints": check_09_real_checkpoints}


def test_every_notebook_has_a_check_and_a_parameters_cell():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        assert path.stem in CHECKS, f"{path.name} has no metrics check in tests/test_notebooks.py"
        nb = nbformat.read(path, as_version=4)
        first_code = next(c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", []))
        assert "smoke = False" in first_code.source and "out_dir" in first_code.source
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} is committed with outputs"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """One smoke recipe for all notebooks, as the main job shares one run's artifacts."""
    return tmp_path_factory.mktemp("artifacts")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, tmp_path, artifacts):
    entry = execute(path, tmp_path, smoke=True, artifacts=artifacts)
    assert entry["status"] == "ok", entry["error"]
    metrics = json.loads((tmp_path / path.stem / "metrics.json").read_text())
    CHECKS[path.stem](metrics)
    assert entry["figures"], "a tutorial notebook should save at least one figure"
    assert (tmp_path / entry["page"]).is_file()
    assert headline_metrics(path.stem, metrics)  # raises KeyError when HEADLINES names a metric no longer written
    index = write_index(tmp_path, [entry])
    assert path.stem in index.read_text()


TRAINING_NOTEBOOKS = [p for p in NOTEBOOKS if "Recipe(" in p.read_text()]


def test_every_notebook_that_trains_takes_the_recipes_preset_and_layout():
    assert len(TRAINING_NOTEBOOKS) >= 7
    for path in TRAINING_NOTEBOOKS:
        declared = papermill.inspect_notebook(str(path))
        assert {"preset", "layout"} <= set(declared), f"{path.name}: no preset or layout parameter"
        assert "preset=preset, layout=layout)" in path.read_text(), f"{path.name}: its Recipe ignores preset or layout"


def test_main_passes_preset_and_layout_only_when_asked(tmp_path, monkeypatch):
    import ppllava.run_notebooks as run_notebooks

    seen = []

    def fake_execute(notebook, run_dir, smoke, parameters=None, artifacts=None):
        seen.append(parameters)
        return {"name": notebook.stem, "notebook": f"{notebook.stem}.ipynb", "page": None, "seconds": 0.1,
                "status": "ok", "error": None, "metrics": None, "figures": []}

    monkeypatch.setattr(run_notebooks, "execute", fake_execute)
    assert run_notebooks.main(["--only", "03_pooling_ablations", "--out", str(tmp_path / "a")]) == 0
    assert run_notebooks.main(["--only", "03_pooling_ablations", "--layout", "free", "--out", str(tmp_path / "b")]) == 0
    assert run_notebooks.main(["--only", "07_long_video", "--preset", "tiny-p8", "--layout", "free",
                               "--out", str(tmp_path / "c")]) == 0
    assert seen == [{}, {"layout": "free"}, {"preset": "tiny-p8", "layout": "free"}]


@pytest.fixture(scope="module")
def free_artifacts(tmp_path_factory):
    """One smoke recipe of the free world's preset, shared as the main job would share it."""
    return tmp_path_factory.mktemp("free-artifacts")


GRID_CHECKS = ("01_tour", "03_pooling_ablations", "07_long_video")  # checks whose token counts follow the patch grid


@pytest.mark.parametrize("path", TRAINING_NOTEBOOKS, ids=[p.stem for p in TRAINING_NOTEBOOKS])
def test_notebook_runs_on_the_free_world_in_smoke_mode(path, tmp_path, free_artifacts):
    """Every notebook that trains, on the free world (issue #14) with its preset, as
    `bash env/main.sh --preset tiny-p8 --layout free` runs them (04 once drew its masks on tiny's 4 x 4 grid)."""
    name = path.stem
    rule = {"weighting": "peak"} if name == "07_long_video" else {}  # the needle's other rule, on the world it was made for
    entry = execute(path, tmp_path, smoke=True, artifacts=free_artifacts,
                    parameters={"preset": "tiny-p8", "layout": "free", **rule})
    assert entry["status"] == "ok", entry["error"]
    metrics = json.loads((tmp_path / name / "metrics.json").read_text())
    if rule:
        assert metrics["pool_margin"]["weighting"] == "peak"
    CHECKS[name](metrics, **({"patches": 64} if name in GRID_CHECKS else {}))  # tiny-p8: 8 x 8 patches
    marker = json.loads((free_artifacts / "smoke" / "recipe.json").read_text())
    assert (marker["preset"], marker["layout"]) == ("tiny-p8", "free")


def test_a_rerun_of_some_notebooks_keeps_the_index_entries_of_the_others(tmp_path):
    from ppllava.run_notebooks import main

    earlier = {"name": "07_long_video", "notebook": "07_long_video.ipynb", "status": "ok", "error": None,
               "seconds": 1.0, "metrics": {"x": 1}, "figures": []}
    (tmp_path / "index.json").write_text(json.dumps([earlier]))
    assert main(["--smoke", "--only", "00_operations", "--out", str(tmp_path)]) == 0
    entries = json.loads((tmp_path / "index.json").read_text())
    assert [e["name"] for e in entries] == ["00_operations", "07_long_video"] and entries[1] == earlier


# --- readable without running: pages, index, nbformat validity --------------------------------------------


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, in order."""

    def __init__(self, text):
        super().__init__()
        self.tags = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def find(self, tag, **attrs):
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


ALL_NOTEBOOKS = sorted(p for p in NOTEBOOK_DIR.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=[str(p.relative_to(NOTEBOOK_DIR)) for p in ALL_NOTEBOOKS])
def test_notebook_validates_under_nbformat(path):
    """Every notebook under notebooks/, generated exercise notebooks included, with a unique id per cell."""
    raw = json.loads(path.read_text())  # before nbformat, which may add missing ids as it reads
    missing = [i for i, cell in enumerate(raw["cells"]) if "id" not in cell]
    assert not missing, f"{path.name}: cells {missing} have no id (nbformat.validator.normalize adds them)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MissingIDFieldWarning and the like are errors to come
        nbformat.validate(nbformat.read(path, as_version=nbformat.NO_CONVERT))


def test_every_notebook_has_headline_metrics():
    assert sorted(HEADLINES) == sorted(p.stem for p in NOTEBOOKS)


def test_main_writes_a_page_per_notebook_and_an_index_that_links_them(tmp_path):
    from ppllava.run_notebooks import main

    assert main(["--smoke", "--only", "00_operations", "--out", str(tmp_path)]) == 0
    page = tmp_path / "00_operations.html"
    figures = sorted((tmp_path / "00_operations").glob("*.png"))
    images = Tags(page.read_text()).find("img")
    assert len(figures) == 3 and len(images) >= len(figures)  # each saved figure is also shown inline
    assert all(img["src"].startswith("data:image/png;base64,") for img in images), [i["src"][:40] for i in images]

    index = Tags((tmp_path / "index.html").read_text())
    row = index.find("tr", id="00_operations")
    assert row and row[0]["data-status"] == "ok" and float(row[0]["data-seconds"]) > 0
    links = [a["href"] for a in index.find("a")]
    assert "00_operations.html" in links and not any(h.endswith(".ipynb") for h in links)
    thumbnails = [img["src"] for img in index.find("img")]
    assert thumbnails == [f"00_operations/{f.name}" for f in figures]
    assert all((tmp_path / src).is_file() for src in thumbnails)
    text = (tmp_path / "index.html").read_text()
    assert "softmax relevance on the object" in text and "CLIP positions after extension</td><td class=num>248" in text


FAILING = {
    "cells": [
        {"cell_type": "code", "id": "params", "metadata": {"tags": ["parameters"]}, "execution_count": None,
         "outputs": [], "source": 'smoke = False\nout_dir = "unused"'},
        {"cell_type": "code", "id": "figure", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "import time\nfrom pathlib import Path\nimport matplotlib.pyplot as plt\n"
                   "fig, ax = plt.subplots(figsize=(2, 2)); ax.plot([0, 1])\n"
                   "fig.savefig(Path(out_dir) / 'line.png'); plt.show()"},
        {"cell_type": "code", "id": "slow", "metadata": {}, "execution_count": None, "outputs": [],
         # what a trainer in the kernel writes (ppllava.train.progress), to the file the main job named
         "source": "import json, os\nPath(os.environ['PPLLAVA_PROGRESS_FILE']).write_text(json.dumps("
                   "{'stage': 'sft2', 'step': 3, 'max_steps': 10, 'elapsed_s': 1.0, 'eta_s': 2.0}))\n"
                   "time.sleep(1.5)"},
        {"cell_type": "code", "id": "fails", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "raise ValueError('the check failed on purpose')"},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def test_a_failed_notebook_gets_its_page_its_error_in_the_index_and_a_bar_that_ticks(tmp_path, monkeypatch, capsys):
    source = tmp_path / "src" / "99_fails.ipynb"
    source.parent.mkdir()
    source.write_text(json.dumps(FAILING))
    monkeypatch.setattr(TickingEngine, "tick_s", 0.1)
    run_dir = tmp_path / "run"
    entry = execute(source, run_dir, smoke=True)
    assert entry["status"] == "failed" and entry["error"] == "ValueError: the check failed on purpose"
    page = (run_dir / entry["page"]).read_text()
    assert "the check failed on purpose" in page  # papermill's partial notebook, traceback included
    assert [i["src"][:22] for i in Tags(page).find("img")] == ["data:image/png;base64,"]
    assert entry["figures"] == ["99_fails/line.png"]
    # The bar, named after the notebook, is redrawn while the 1.5 s cell sleeps, not only when a cell ends,
    # and shows the training progress the kernel wrote to the file named in its environment.
    frames = [f for f in re.split(r"[\r\n]", capsys.readouterr().err) if f.startswith("99_fails:")]
    counts = [int(m.group(1)) for m in map(re.compile(r"\| (\d+)/\d+ \[").search, frames) if m]
    assert counts and max(counts.count(n) for n in set(counts)) >= 5, frames
    assert any(f.rstrip().endswith("training sft2 3/10 steps, ~2 s left]") for f in frames), frames
    assert not (run_dir / ".progress.json").exists() and PROGRESS_ENV not in os.environ  # nothing left behind

    index = Tags(write_index(run_dir, [entry]).read_text())
    assert index.find("tr", id="99_fails")[0]["data-status"] == "failed"
    assert "ValueError: the check failed on purpose" in (run_dir / "index.html").read_text()


# --- --readme-figures: docs/figures from a run -------------------------------------------------------------


def test_every_readme_figure_is_saved_by_its_notebook():
    for source in README_FIGURES.values():
        notebook, name = source.split("/")
        nb = nbformat.read(NOTEBOOK_DIR / f"{notebook}.ipynb", as_version=4)
        assert any("savefig" in c.source and f'"{name}"' in c.source for c in nb.cells if c.cell_type == "code"), \
            f"{notebook}.ipynb saves no {name}, which README_FIGURES copies into docs/figures"


def fake_run(run_dir, sizes):
    """A run directory holding README_FIGURES' sources as plain PNGs of the given (width, height)."""
    for source, size in zip(README_FIGURES.values(), sizes):
        (run_dir / source).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, "white").save(run_dir / source)
    return {source.split("/")[0]: "ok" for source in README_FIGURES.values()}


def test_readme_figures_are_copied_downscaled_to_900_px(tmp_path):
    shapes = [(1800, 600), (600, 400), (2000, 1001), (1300, 420), (768, 500)]
    assert len(shapes) == len(README_FIGURES)  # one shape for every figure, or fake_run leaves some out
    statuses = fake_run(tmp_path / "run", shapes)
    copied = copy_readme_figures(tmp_path / "run", statuses, dest=tmp_path / "figures")
    assert [p.name for p in copied] == list(README_FIGURES)
    sizes = [Image.open(p).size for p in copied]
    assert sizes == [(900, 300), (600, 400), (900, 450), (900, 291), (768, 500)]  # aspect kept; a narrow one is not enlarged


def test_readme_figures_refuse_a_missing_figure_or_a_failed_notebook_and_copy_nothing(tmp_path):
    run_dir, dest = tmp_path / "run", tmp_path / "figures"
    statuses = fake_run(run_dir, [(100, 50)] * len(README_FIGURES))
    (run_dir / "03_pooling_ablations" / "modes.png").unlink()
    with pytest.raises(ValueError, match=r"03_pooling_ablations did not save 03_pooling_ablations/modes.png"):
        copy_readme_figures(run_dir, statuses, dest=dest)
    assert not dest.exists()

    fake_run(run_dir, [(100, 50)] * len(README_FIGURES))
    with pytest.raises(ValueError, match=r"07_long_video failed, so 07_long_video/needle_heatmap.png is not a result"):
        copy_readme_figures(run_dir, {**statuses, "07_long_video": "failed"}, dest=dest)
    with pytest.raises(ValueError, match=r"02_alignment did not run"):
        copy_readme_figures(run_dir, {k: v for k, v in statuses.items() if k != "02_alignment"}, dest=dest)
    assert not dest.exists()


def test_main_with_readme_figures_copies_them_only_when_their_notebooks_ran_ok(tmp_path, monkeypatch, capsys):
    import ppllava.run_notebooks as run_notebooks

    failed = set()

    def fake_execute(notebook, run_dir, smoke, parameters=None, artifacts=None):  # the figures a real run would save
        if notebook.stem not in failed:
            for source in README_FIGURES.values():
                if source.startswith(notebook.stem + "/"):
                    (run_dir / source).parent.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (1200, 600), "white").save(run_dir / source)
        return {"name": notebook.stem, "notebook": f"{notebook.stem}.ipynb", "page": None, "seconds": 0.1,
                "status": "failed" if notebook.stem in failed else "ok",
                "error": "ValueError: on purpose" if notebook.stem in failed else None, "metrics": None, "figures": []}

    monkeypatch.setattr(run_notebooks, "execute", fake_execute)
    monkeypatch.setattr(run_notebooks, "FIGURES", tmp_path / "figures")
    only = ["--only", *sorted({s.split("/")[0] for s in README_FIGURES.values()})]
    assert run_notebooks.main([*only, "--readme-figures", "--out", str(tmp_path / "run")]) == 0
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(README_FIGURES)
    assert Image.open(tmp_path / "figures" / "pooling_modes.png").size == (900, 450)

    failed.add("07_long_video")
    assert run_notebooks.main([*only, "--readme-figures", "--out", str(tmp_path / "again")]) == 1
    assert "README figures not updated" in capsys.readouterr().err
