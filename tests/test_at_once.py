"""Several trainings at once (ppllava.train.at_once, Recipe.at_once): order, limits, failures, and the
real thing on the smoke recipe."""
import json
import sys
from pathlib import Path

import pytest
import torch

from ppllava.progress import PROGRESS_ENV, status_line
from ppllava.train.at_once import JOB_CONFIG, Job, train_jobs
from ppllava.train.config import TrainConfig
from ppllava.train.recipe import AT_ONCE_PREFIX, Recipe

# A stand-in for `python -m ppllava.train`: logs its start and end (wall clock) and its thread count,
# sleeps, then writes the model directory's marker, or fails when its name says so.
FAKE = r"""
import json, os, sys, time
from pathlib import Path
from ppllava.train.config import TrainConfig
cfg = TrainConfig.from_yaml(Path(sys.argv[1]))
run_dir = Path(cfg.run_dir)
if cfg.init_from and not (Path(cfg.init_from) / "config.yaml").exists():
    sys.exit(f"{cfg.init_from} is not there yet")
events = run_dir.parent / "events.jsonl"
def log(what):
    with open(events, "a") as f:
        f.write(json.dumps({"job": run_dir.name, "what": what, "t": time.time(),
                            "threads": os.environ["OMP_NUM_THREADS"]}) + "\n")
log("start")
time.sleep(1.5 if "slow" in run_dir.name else 0.6)
if "broken" in run_dir.name:
    print("a training that fails"); sys.exit(3)
(run_dir / "model").mkdir(parents=True)
(run_dir / "model" / "config.yaml").write_text("done")
log("end")
"""


def fake_command(job, config_path):
    return [sys.executable, "-c", FAKE, str(config_path)]


def job(root: Path, name: str, start: str = None) -> Job:
    cfg = TrainConfig(stage="sft2", preset="tiny", data=str(root / "world"), run_dir=str(root / name),
                      init_from=str(root / start / "model") if start else None)
    return Job(name, cfg)


def events(root: Path):
    lines = [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]
    return {(e["job"], e["what"]): e for e in lines}


def test_jobs_run_at_most_at_once_and_after_the_model_they_start_from(tmp_path):
    jobs = [job(tmp_path, "a"), job(tmp_path, "b"), job(tmp_path, "a-child", start="a"), job(tmp_path, "c")]
    seconds = train_jobs(jobs, at_once=2, threads=1, command=fake_command)
    assert set(seconds) == {"a", "b", "a-child", "c"} and all(s > 0.5 for s in seconds.values())
    ev = events(tmp_path)
    assert ev[("a-child", "start")]["t"] >= ev[("a", "end")]["t"]  # started once its start model was there
    spans = [(ev[(n, "start")]["t"], ev[(n, "end")]["t"]) for n in seconds]
    for t, _ in spans:  # never more than two at a time
        assert sum(start <= t < end for start, end in spans) <= 2
    assert ev[("a", "start")]["t"] < ev[("b", "end")]["t"] and ev[("b", "start")]["t"] < ev[("a", "end")]["t"]  # a and b overlapped
    assert {e["threads"] for e in ev.values()} == {"1"}
    assert not any((tmp_path / n / JOB_CONFIG).exists() for n in seconds)  # tidied after success
    assert (tmp_path / "a" / "train.log").exists()


def test_seconds_come_back_in_the_jobs_order_not_the_order_they_finished(tmp_path):
    # Recipe.at_once names a block by these keys: a race on which job ends first must not rename it.
    seconds = train_jobs([job(tmp_path, "slow"), job(tmp_path, "quick")], at_once=2, threads=1, command=fake_command)
    ev = events(tmp_path)
    assert ev[("quick", "end")]["t"] < ev[("slow", "end")]["t"]  # quick finished first...
    assert list(seconds) == ["slow", "quick"]  # ...and still comes second


def test_a_failed_job_is_named_with_its_log_and_nothing_new_starts(tmp_path):
    jobs = [job(tmp_path, "broken"), job(tmp_path, "b"), job(tmp_path, "after-broken", start="broken")]
    with pytest.raises(RuntimeError, match=r"broken \(exit code 3; its log: .*broken/train.log\)\n.*a training that fails"
                                           r"(.|\n)*not started: after-broken"):
        train_jobs(jobs, at_once=2, threads=1, command=fake_command)
    assert (tmp_path / "b" / "model" / "config.yaml").exists()  # the one running beside it finished
    assert (tmp_path / "broken" / JOB_CONFIG).exists()  # kept, to rerun by hand


def test_bad_job_sets_are_refused_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="at_once must be >= 1"):
        train_jobs([job(tmp_path, "a")], at_once=0, command=fake_command)
    with pytest.raises(ValueError, match="distinct names"):
        train_jobs([job(tmp_path, "a"), job(tmp_path, "a")], at_once=2, command=fake_command)
    with pytest.raises(ValueError, match="in a cycle: x, y"):
        train_jobs([job(tmp_path, "x", start="y"), job(tmp_path, "y", start="x")], at_once=2, command=fake_command)
    assert not (tmp_path / "events.jsonl").exists()


def test_the_bar_shows_every_training_at_once(tmp_path):
    path = tmp_path / ".progress.json"
    state = {"stage": "sft1-none", "step": 10, "max_steps": 1000, "elapsed_s": 5.0, "eta_s": 90.0}
    (tmp_path / ".progress.json.0").write_text(json.dumps(state))
    (tmp_path / ".progress.json.1").write_text(json.dumps({**state, "stage": "sft1-prompt", "eta_s": None}))
    (tmp_path / "..progress.json.1.tmp").write_text("{")  # a write in flight is not read
    assert status_line(path) == "training sft1-none 10/1000 steps, ~2 min left | training sft1-prompt 10/1000 steps"


@pytest.fixture(scope="module")
def smoke_recipe(tmp_path_factory):
    recipe = Recipe(tmp_path_factory.mktemp("at_once"), smoke=True)
    recipe.model_dir("sft1")
    return recipe


def test_recipe_trains_a_blocks_variants_at_once(smoke_recipe, tmp_path, monkeypatch):
    recipe = smoke_recipe
    monkeypatch.setenv(PROGRESS_ENV, str(tmp_path / ".progress.json"))
    with recipe.at_once(jobs=2):
        paths = {mode: recipe.pooling_variant(mode, "sft1") for mode in ("adaptive", "temporal_mean")}
        assert recipe.pooling_variant("adaptive", "sft1") == paths["adaptive"]  # asked twice: queued once
        assert not any((p / "config.yaml").exists() for p in paths.values())  # nothing trained inside the block
        with pytest.raises(ValueError, match="asked for twice in one Recipe.at_once block, with different configs"):
            recipe.variant("sft1-adaptive", "sft2", model={"pooling": "adaptive", "video_output_size": (2, 2, 2)},
                           init_from=str(recipe.model_dir("sft1")), max_steps=3)
    for mode, path in paths.items():
        assert recipe.model(path.parent.name).config.pooling == mode
        assert (path.parent / "train.log").exists() and (path.parent / "train_config.yaml").exists()
    assert {"sft1-adaptive", "sft1-temporal_mean"} <= set(recipe.seconds)
    # The two jobs overlapped: the block's own wall time is kept, at most their sum and at least the longer one.
    block = recipe.seconds[AT_ONCE_PREFIX + "sft1-adaptive + sft1-temporal_mean"]
    each = [recipe.seconds["sft1-adaptive"], recipe.seconds["sft1-temporal_mean"]]
    assert max(each) <= block <= sum(each) + 1.0
    assert recipe.total_seconds() == pytest.approx(sum(recipe.seconds.values()) - sum(each))
    assert not list(tmp_path.glob(".progress.json.*"))
    # Trained once: the same block again queues nothing and trains nothing.
    before = dict(recipe.seconds)
    with recipe.at_once(jobs=2):
        assert recipe.pooling_variant("adaptive", "sft1") == paths["adaptive"]
    assert recipe.seconds == before


def test_a_block_that_raises_trains_nothing_and_blocks_do_not_nest(smoke_recipe):
    recipe = smoke_recipe
    with pytest.raises(KeyError):
        with recipe.at_once(jobs=2):
            recipe.pooling_variant("spatial", "sft1")
            raise KeyError("stop")
    assert not (recipe.out / "sft1-spatial" / "model").exists()
    with pytest.raises(ValueError, match="do not nest"):
        with recipe.at_once(jobs=2):
            with recipe.at_once(jobs=2):
                pass
    with pytest.raises(ValueError, match="jobs >= 1"):
        with recipe.at_once(jobs=0):
            pass


def test_a_forked_job_trains_the_weights_of_python_m_ppllava_train(smoke_recipe, tmp_path):
    """A job forked from the trainer server (the default) ends on the same weights, bit for bit, as the
    same config run by `python -m ppllava.train` with the same thread count (`train_command`), and a
    failed forked job is named with its log."""
    from safetensors.torch import load_file

    from ppllava.train.at_once import train_command

    base = smoke_recipe.config("sft2")
    jobs = {how: Job(how, TrainConfig(**{**base.__dict__, "run_dir": str(tmp_path / how),
                                         "init_from": str(smoke_recipe.model_dir("sft1")), "max_steps": 3}))
            for how in ("forked", "command")}
    train_jobs([jobs["forked"]], at_once=1, threads=1)
    train_jobs([jobs["command"]], at_once=1, threads=1, command=train_command)
    forked, command = (load_file(tmp_path / how / "model" / "model.safetensors") for how in ("forked", "command"))
    assert forked.keys() == command.keys() and all(torch.equal(forked[k], command[k]) for k in forked)
    assert "Seed set to 0" in (tmp_path / "forked" / "train.log").read_text()  # its output, in its log
    broken = Job("broken", TrainConfig(**{**base.__dict__, "run_dir": str(tmp_path / "broken"),
                                          "init_from": str(tmp_path / "nowhere"), "max_steps": 3}))
    with pytest.raises(RuntimeError, match=r"broken \(exit code [12]; its log: .*train.log\)"):
        train_jobs([broken], at_once=1, threads=1)
