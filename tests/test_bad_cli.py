"""Bad configs and command lines (issue #13 §4): each is one error line naming the field or argument
and the value, the CLIs exit with code 2, and nothing is written."""
import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ppllava.data.tasks import VIDEO_TASKS
from ppllava.data.world import WorldSpec
from ppllava.train.config import TrainConfig
from ppllava.validation import load_yaml, parse_overrides

ROOT = Path(__file__).resolve().parent.parent


# --- TrainConfig: every field's type, then its range --------------------------------------------------

@pytest.mark.parametrize("overrides,match", [
    (dict(lr="abc"), r"TrainConfig.lr must be a number, got 'abc' \(str\)"),  # float refuses str
    (dict(lr=True), r"TrainConfig.lr must be a number, got True \(bool\)"),  # ... and bool
    (dict(batch_size=8.0), r"TrainConfig.batch_size must be an int, got 8.0 \(float\)"),  # int refuses float
    (dict(batch_size="8"), r"TrainConfig.batch_size must be an int, got '8' \(str\)"),  # ... str
    (dict(max_epochs=True), r"TrainConfig.max_epochs must be an int, got True \(bool\)"),  # ... bool
    (dict(clip_text_groups=2.0), r"TrainConfig.clip_text_groups must be an int, got 2.0 \(float\)"),
    (dict(gradient_checkpointing="yes"), r"TrainConfig.gradient_checkpointing must be a bool, got 'yes'"),
    (dict(stage=2), r"TrainConfig.stage must be a string, got 2 \(int\)"),
    (dict(init_from=3), r"TrainConfig.init_from must be a string or None, got 3"),  # Optional
    (dict(mix={"video": "half"}), r"TrainConfig.mix\['video'\] must be a number, got 'half'"),  # Dict values
    (dict(mix={1: 1.0}), r"TrainConfig.mix key 1 must be a string, got 1"),  # Dict keys
    (dict(mix=["video"]), r"TrainConfig.mix must be a mapping, got \['video'\]"),
    (dict(model=["pooling"]), r"TrainConfig.model must be a mapping"),
    (dict(clip_filler=[0, 1.5]), r"TrainConfig.clip_filler\[1\] must be an int, got 1.5"),  # List items
    (dict(clip_filler="0,5"), r"TrainConfig.clip_filler must be a list of int, got '0,5'"),
    (dict(devices=1.5), r"TrainConfig.devices must be an int or a string or a list of int, got 1.5"),  # Union
    (dict(limit_val_batches="all"), r"TrainConfig.limit_val_batches must be an int or a number, got 'all'"),
])
def test_train_config_checks_every_type(overrides, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**overrides)


@pytest.mark.parametrize("overrides,match", [
    (dict(batch_size=0), "TrainConfig.batch_size must be >= 1, got 0"),
    (dict(max_steps=0), r"TrainConfig.max_steps must be -1 \(run max_epochs\) or >= 1, got 0"),
    (dict(max_steps=-2), "got -2"),
    (dict(lr=0.0), "TrainConfig.lr must be > 0, got 0.0"),
    (dict(lr=-1e-3), "TrainConfig.lr must be > 0, got -0.001"),
    (dict(warmup_ratio=1.0), r"TrainConfig.warmup_ratio must be in \[0, 1\), got 1.0"),
    (dict(weight_decay=-0.1), "TrainConfig.weight_decay must be >= 0, got -0.1"),
    (dict(num_workers=-1), "TrainConfig.num_workers must be >= 0, got -1"),
    (dict(beta=0), "TrainConfig.beta must be > 0, got 0"),
    (dict(clip_text_groups=0), "TrainConfig.clip_text_groups must be >= 1, got 0"),
    (dict(label_smoothing=0.5), r"TrainConfig.label_smoothing must be in \[0, 0.5\), got 0.5"),
    (dict(label_smoothing=0.1, dpo_loss="hinge"), "label_smoothing 0.1 applies to dpo_loss 'sigmoid' only, got dpo_loss 'hinge'"),
    (dict(dpo_logps="avg"), r"TrainConfig.dpo_logps must be one of \('sum', 'mean'\), got 'avg'"),
    (dict(preset="huge"), "TrainConfig.preset must be one of .*got 'huge'"),
    (dict(template="alpaca"), "TrainConfig.template must be one of .*got 'alpaca'"),
    (dict(mix={"audio": 1.0}), r"TrainConfig.mix\['audio'\] must be a media kind"),
    (dict(mix={"video": 0.0}), "TrainConfig.mix needs a share > 0"),
    (dict(limit_val_batches=1.5), "TrainConfig.limit_val_batches must be .* got 1.5"),
    (dict(limit_val_batches=-1), "TrainConfig.limit_val_batches must be .* got -1"),
    (dict(model={"pooling": "max"}), "TrainConfig.model: PPLLaVAConfig.pooling must be one of .*got 'max'"),
    (dict(model={"poling": "max"}), r"TrainConfig.model: unknown PPLLaVAConfig fields \['poling'\]"),
])
def test_train_config_checks_every_range(overrides, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**overrides)


def test_train_config_accepts_what_yaml_and_lightning_give(tmp_path):
    cfg = TrainConfig(lr=1, clip_filler=(0, 5), devices=[0, 1], limit_val_batches=2, mix={"video": 1})
    assert cfg.clip_filler == [0, 5] and cfg.devices == [0, 1]  # a list, so safe_dump can write it
    cfg.to_yaml(tmp_path / "cfg.yaml")
    assert TrainConfig.from_yaml(tmp_path / "cfg.yaml") == cfg


def test_model_config_names_a_missing_init_from(tmp_path):
    cfg = TrainConfig(stage="sft2", init_from=str(tmp_path / "nowhere"))  # read at run time, not construction
    with pytest.raises(ValueError, match="TrainConfig.init_from .*nowhere.*config.yaml is missing"):
        cfg.model_config()


@pytest.mark.parametrize("text,match", [
    ("- lr: 0.1\n", "expected a mapping of TrainConfig fields, got list"),
    ("0.1\n", "expected a mapping of TrainConfig fields, got float"),
    ("", "expected a mapping of TrainConfig fields, got NoneType"),
    ("lr: [0.1\n", "not valid YAML"),
    ("lr: abc\n", "TrainConfig.lr must be a number, got 'abc'"),
    ("lr: 0.1\nlearning_rate: 0.1\n", r"unknown TrainConfig fields \['learning_rate'\]"),
])
def test_train_config_from_yaml_names_the_file(tmp_path, text, match):
    path = tmp_path / "stage.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        TrainConfig.from_yaml(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), ("5E+2", 500.0), ("-2.5e-4", -2.5e-4), ("1.0e-3", 1e-3),
                                        ("3", 3), ("abc", "abc"), ("e3", "e3"), ("[2, 2, 2]", [2, 2, 2])])
def test_yaml_reads_exponent_floats(text, value):
    # PyYAML alone reads "1e-3" as a string: `--set lr=1e-3` (or `lr: 1e-3` in a file) would then be refused.
    assert load_yaml(text) == value and type(load_yaml(text)) is type(value)


def test_parse_overrides():
    parser = argparse.ArgumentParser()
    assert parse_overrides(parser, ["lr=1e-3", "model={pooling: none}", "init_from=null"]) == {
        "lr": 1e-3, "model": {"pooling": "none"}, "init_from": None}


# --- WorldSpec -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,match", [
    (dict(size=-64), "WorldSpec.size must be an even number of pixels >= 16, got -64"),
    (dict(size=63), "got 63"),
    (dict(size=8), "got 8"),
    (dict(size=64.0), r"WorldSpec.size must be an int, got 64.0 \(float\)"),
    (dict(size="64"), r"WorldSpec.size must be an int, got '64' \(str\)"),
    (dict(frames=0), "WorldSpec.frames must be >= 1, got 0"),
    (dict(fps=0), "WorldSpec.fps must be >= 1, got 0"),
    (dict(fps=-8), "WorldSpec.fps must be >= 1, got -8"),
    (dict(max_objects=5), r"WorldSpec.max_objects must be in \[1, 4\]"),
    (dict(seed=-1), "WorldSpec.seed must be >= 0, got -1"),
    (dict(long_frames=[16, "x"]), r"WorldSpec.long_frames\[1\] must be an int, got 'x'"),
    (dict(long_frames=[1]), "WorldSpec.long_frames: 1 frames cannot hold a needle of 2 frames"),
    (dict(needle_frames=[]), "WorldSpec.needle_frames must be frame counts >= 1, got \\[\\]"),
    (dict(needle_frames=[0, 1]), r"WorldSpec.needle_frames must be frame counts >= 1, got \[0, 1\]"),
    (dict(media_mix={"audio": 1.0}), "WorldSpec.media_mix: unknown kind 'audio'"),
    (dict(media_mix={"video": -1.0}), r"WorldSpec.media_mix\['video'\] must be >= 0, got -1.0"),
    (dict(media_mix={"video": 0.0}), "WorldSpec.media_mix needs a share > 0"),
    (dict(task_weights={"nope": 1.0}), "WorldSpec.task_weights: unknown task 'nope'"),
    (dict(task_weights={"mc": "x"}), r"WorldSpec.task_weights\['mc'\] must be a number, got 'x'"),
    (dict(task_weights={"mc": float("nan")}), r"WorldSpec.task_weights\['mc'\] must be >= 0, got nan"),
    (dict(task_weights={t: 0.0 for t in VIDEO_TASKS}), "leave every task of .* at weight 0"),
])
def test_world_spec_names_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        WorldSpec(**overrides)


# --- the CLIs: exit 2, one line naming the culprit, nothing written ---------------------------------------

def _usage_error(capsys, call, *, absent=(), match):
    """Run `call()`, expect argparse's exit 2; its last stderr line is the one error line."""
    with pytest.raises(SystemExit) as info:
        call()
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert ": error: " in last
    assert re.search(match, last), last
    for path in absent:
        assert not Path(path).exists(), f"{path} was written by a call that failed validation"


@pytest.fixture
def stage_yaml(tmp_path):
    path = tmp_path / "sft2.yaml"
    path.write_text(f"stage: sft2\npreset: tiny\ndata: {tmp_path / 'world'}\nrun_dir: {tmp_path / 'run'}\n")
    return path


@pytest.mark.parametrize("argv,match", [
    (["--set", "lr=abc"], r"TrainConfig.lr must be a number, got 'abc'"),
    (["--set", "batch_size=-1"], "TrainConfig.batch_size must be >= 1, got -1"),
    (["--set", "max_steps=2.5"], "TrainConfig.max_steps must be an int, got 2.5"),
    (["--set", "lr"], "--set expects FIELD=VALUE, got 'lr'"),
    (["--set", "mix={video"], "--set mix={video: the value is not valid YAML"),
    (["--set", "pooling=none"], r"unknown TrainConfig fields \['pooling'\]"),
    (["--set", "model={pooling: max}"], "TrainConfig.model: PPLLaVAConfig.pooling must be one of"),
    (["--set", "model={num_frames: 0}"], "TrainConfig.model: PPLLaVAConfig.num_frames must be >= 1, got 0"),
    (["--set", "init_from=nowhere/model"], "TrainConfig.init_from 'nowhere/model'"),
])
def test_train_cli_refuses_before_it_runs(capsys, tmp_path, stage_yaml, argv, match):
    from ppllava.train.run import main

    _usage_error(capsys, lambda: main([str(stage_yaml), *argv]), absent=[tmp_path / "run"], match=match)


@pytest.mark.parametrize("text,match", [("- stage: sft2\n", "expected a mapping of TrainConfig fields, got list"),
                                        ("sft2\n", "got str"), (None, "No such file")])
def test_train_cli_refuses_a_config_that_is_not_a_mapping(capsys, tmp_path, text, match):
    from ppllava.train.run import main

    path = tmp_path / "stage.yaml"
    if text is not None:
        path.write_text(text)
    _usage_error(capsys, lambda: main([str(path)]), match=f"stage.yaml.*{match}|{match}.*stage.yaml")


@pytest.mark.parametrize("argv,match", [
    (["--fps", "0"], "argument --fps: expected an int >= 1, got 0"),
    (["--size", "-64"], "argument --size: expected an int >= 1, got -64"),
    (["--size", "63"], "WorldSpec.size must be an even number of pixels >= 16, got 63"),
    (["--frames", "0"], "argument --frames: expected an int >= 1, got 0"),
    (["--train", "-1"], "argument --train: expected an int >= 0, got -1"),
    (["--val", "ten"], "argument --val: expected an int >= 0, got 'ten'"),
    (["--long-per-length", "-3"], "argument --long-per-length: expected an int >= 0, got -3"),
    (["--long-frames", "0"], "argument --long-frames: expected an int >= 1, got 0"),
    (["--long-frames", "1"], "WorldSpec.long_frames: 1 frames cannot hold a needle of 2 frames"),
    (["--seed", "-1"], "argument --seed: expected an int >= 0, got -1"),
    (["--dpo-videos", "dev=3"], r"--dpo-videos takes train, val or test = a count >= 0, got \['dev=3'\]"),
    (["--dpo-videos", "train=-3"], r"--dpo-videos takes .* got \['train=-3'\]"),
    (["--dpo-videos", "train=many"], "--dpo-videos train=many: expected KEY=int"),
    (["--task-weight", "mc=x"], "--task-weight mc=x: expected KEY=float"),
    (["--task-weight", "nope=2"], "WorldSpec.task_weights: unknown task 'nope'"),
])
def test_world_cli_refuses_before_it_writes(capsys, tmp_path, argv, match):
    from ppllava.data.world import main

    out = tmp_path / "world"
    _usage_error(capsys, lambda: main(["--out", str(out), *argv]), absent=[out], match=match)


def test_world_cli_writes_a_valid_world(tmp_path):
    import json

    from ppllava.data.world import main

    main(["--out", str(tmp_path / "w"), "--train", "2", "--val", "0", "--test", "0", "--long-per-length", "0",
          "--task-weight", "mc=2", "--dpo-videos", "test=1"])
    meta = json.loads((tmp_path / "w" / "world.json").read_text())
    assert meta["spec"]["task_weights"] == {"mc": 2.0} and meta["counts"]["test"] == {"dpo": 1}


def test_world_cli_exits_2_in_a_subprocess(tmp_path):
    out = tmp_path / "world"
    proc = subprocess.run([sys.executable, "-m", "ppllava.data.world", "--out", str(out), "--fps", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "argument --fps: expected an int >= 1, got 0" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists() and proc.stdout == ""


@pytest.mark.parametrize("argv,match", [
    (["--train", "0"], "argument --train: expected an int >= 1, got 0"),
    (["--eval", "-5"], "argument --eval: expected an int >= 1, got -5"),
    (["--preset", "huge"], "--preset huge: no .*huge/clip.yaml"),
    (["--preset", "paper"], r"--preset paper: no .*paper/lm.yaml \(presets with a lm config: \['small', 'tiny', 'tiny-p8', 'tiny-p8-grounded', 'tiny-p8-long'\]\)"),
])
def test_recipe_cli_refuses_before_it_writes(capsys, tmp_path, argv, match):
    from ppllava.train.recipe import main

    out = tmp_path / "recipe"
    _usage_error(capsys, lambda: main(["--out", str(out), *argv]), absent=[out], match=match)


def test_recipe_cli_reads_every_stage_config_first(capsys, tmp_path, monkeypatch):
    import ppllava.train.recipe as recipe

    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs" / "tiny", configs / "tiny")
    broken = configs / "tiny" / "dpo.yaml"
    broken.write_text(broken.read_text().replace("beta: 0.1", "beta: abc"))
    monkeypatch.setattr(recipe, "CONFIGS", configs)
    out = tmp_path / "recipe"
    _usage_error(capsys, lambda: recipe.main(["--out", str(out), "--smoke"]), absent=[out],
                 match=r"dpo.yaml: TrainConfig.beta must be a number, got 'abc'")


@pytest.mark.parametrize("argv,match", [
    (["tiny", "--set", "num_frames=abc"], r"PPLLaVAConfig.num_frames must be an int, got 'abc'"),
    (["tiny", "--set", "pooling=max"], "PPLLaVAConfig.pooling must be one of .*got 'max'"),
    (["tiny", "--set", "video_kernel=[2, 2]"], "PPLLaVAConfig.video_kernel must have 3 items, got 2"),
    (["tiny", "--set", "frames=4"], r"unknown PPLLaVAConfig fields: \['frames'\]"),
    (["tiny", "--set", "=4"], "--set expects FIELD=VALUE, got '=4'"),
    (["huge"], "argument preset: invalid choice: 'huge'"),
])
def test_describe_cli_names_the_field(capsys, argv, match):
    from ppllava.describe import main

    _usage_error(capsys, lambda: main(argv), match=match)


def test_notebook_cli_refuses_before_it_writes(capsys, tmp_path):
    from ppllava.run_notebooks import main

    out = tmp_path / "run"
    _usage_error(capsys, lambda: main(["--only", "00_operation", "--out", str(out)]), absent=[out],
                 match=r"--only: unknown notebooks \['00_operation'\]")
    (tmp_path / "file").write_text("")
    _usage_error(capsys, lambda: main(["--out", str(tmp_path / "file")]), match="--out .*file is a file")
    _usage_error(capsys, lambda: main(["--smoke", "--readme-figures", "--out", str(out)]), absent=[out],
                 match="--readme-figures with --smoke: smoke figures are not results")
    _usage_error(capsys, lambda: main(["--preset", "tiny-p9", "--out", str(out)]), absent=[out],
                 match=r"--preset tiny-p9: no .*configs/tiny-p9; presets: \[.*'tiny-p8'")
    _usage_error(capsys, lambda: main(["--layout", "lattice", "--out", str(out)]), absent=[out],
                 match="--layout: invalid choice: 'lattice'")
    _usage_error(capsys, lambda: main(["--layout", "free", "--readme-figures", "--out", str(out)]), absent=[out],
                 match="--readme-figures with --preset or --layout: docs/figures/ holds the default world's")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the refusal is for machines without a GPU")
@pytest.mark.parametrize("script", ["throughput_bench.py", "long_video_bench.py", "guidance_bench.py"])
def test_paper_benchmarks_refuse_a_cpu_before_building_a_7b_model(script):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--paper", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--paper needs a CUDA device, got --device cpu" in done.stderr
