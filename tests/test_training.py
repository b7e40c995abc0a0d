"""Training stages end to end on a tiny world, resume, broken checkpoints, DDP on CPU, configs."""
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from ppllava.config import PPLLaVAConfig
from ppllava.data.world import WorldSpec, write_world
from ppllava.model import PPLLaVA
from ppllava.train.config import TrainConfig
from ppllava.train.modules import MODULES
from ppllava.train.run import run

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_world(root, WorldSpec(), train=32, val=16, test=0, long_per_length=0, progress=False)
    return root


def tiny_cfg(world, tmp_path, stage, **kw):
    defaults = dict(stage=stage, preset="tiny", data=str(world), run_dir=str(tmp_path / stage), batch_size=8,
                    lr=1e-3, max_epochs=1, limit_val_batches=2)
    return TrainConfig(**{**defaults, **kw})


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.stem}" for p in CONFIGS])
def test_every_config_loads_and_its_model_builds(path):
    cfg = TrainConfig.from_yaml(path)
    # configs/<preset>/ or configs/<preset>-<variant>/ (tiny-p8: the tiny preset with a larger tower)
    assert path.parent.name.split("-")[0] == cfg.preset and cfg.stage == path.stem
    model_config = PPLLaVAConfig.from_name(cfg.preset, **cfg.model)
    if cfg.preset == "paper":  # the published hyper-parameters, checked on the meta device
        assert {"sft2": 2e-5, "dpo": 5e-6}.get(cfg.stage, cfg.lr) == cfg.lr
        assert model_config.num_frames == 32 and model_config.video_kernel == (2, 3, 3)
        with torch.device("meta"):
            model = PPLLaVA(model_config)
        module = MODULES[cfg.stage](model, TrainConfig(**{**cfg.__dict__, "init_from": cfg.init_from or "x"}))
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        expected = {"clip": (4e8, 5e8), "sft1": (2e7, 2.2e7), "sft2": (6.7e9, 6.8e9), "dpo": (6.7e9, 6.8e9)}[cfg.stage]
        assert expected[0] < trainable < expected[1], (cfg.stage, trainable)


def test_stage_one_trains_the_projector_only(world, tmp_path):
    metrics = run(tiny_cfg(world, tmp_path, "sft1", max_steps=2))
    assert metrics["steps"] > 0
    after = load_file(tmp_path / "sft1" / "model" / "model.safetensors")
    torch.manual_seed(0)
    start = PPLLaVA(PPLLaVAConfig.from_name("tiny")).state_dict()
    changed = {k for k, v in after.items() if k in start and not torch.equal(v, start[k])}
    assert changed and all(k.startswith(("projector.", "image_newline")) for k in changed), sorted(changed)[:5]
    assert (tmp_path / "sft1" / "train_config.yaml").exists() and list((tmp_path / "sft1" / "logs").glob("version_*/metrics.csv"))


def test_clip_sft_lora_and_dpo_stages_run(world, tmp_path):
    clip = run(tiny_cfg(world, tmp_path, "clip", max_steps=3))
    assert 0.0 <= clip["val/pointing"] <= 1.0
    glob = run(tiny_cfg(world, tmp_path, "clip", run_dir=str(tmp_path / "global"), clip_loss="global", max_steps=2))
    assert "val/pointing" in glob
    sft = run(tiny_cfg(world, tmp_path, "sft2", max_steps=3, lora_rank=4, init_from=str(tmp_path / "clip" / "model")))
    assert sft["train/token_accuracy"] >= 0.0 and sft["train/tokens_per_s"] > 0
    dpo = run(tiny_cfg(world, tmp_path, "dpo", batch_size=4, lr=1e-4, init_from=str(tmp_path / "sft2" / "model")))
    for key in ("val/reward_accuracy", "val/reward_margin", "val/reward_chosen", "val/reward_rejected"):
        assert key in dpo
    lora_dpo = run(tiny_cfg(world, tmp_path, "dpo", run_dir=str(tmp_path / "dpo_lora"), batch_size=4, max_steps=2,
                            lora_rank=4, init_from=str(tmp_path / "sft2" / "model")))
    assert "train/reward_accuracy" in lora_dpo


class InterruptAfterEpoch(L.Callback):
    """Stops the run as a crash would, after the checkpoint of `epoch` is written."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def test_resume_ends_with_the_same_weights(world, tmp_path):
    whole = run(tiny_cfg(world, tmp_path, "sft2", run_dir=str(tmp_path / "whole"), max_epochs=3))
    cut = tiny_cfg(world, tmp_path, "sft2", run_dir=str(tmp_path / "cut"), max_epochs=3)
    interrupted = run(cut, callbacks=[InterruptAfterEpoch(0)])
    assert interrupted["steps"] < whole["steps"]
    resumed = run(cut, resume=True)
    assert resumed["steps"] == whole["steps"]
    assert len(list((tmp_path / "cut" / "logs").glob("version_*/metrics.csv"))) == 2  # the first run's logs kept
    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_a_checkpoint_cut_short_is_a_clear_error(world, tmp_path):
    cfg = tiny_cfg(world, tmp_path, "sft2", max_steps=2)
    run(cfg)
    last = tmp_path / "sft2" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    with pytest.raises(ValueError, match="last.ckpt cannot be read.*cut short"):
        run(cfg, resume=True)


def test_two_process_ddp_on_cpu(world, tmp_path):
    config = tmp_path / "ddp.yaml"
    tiny_cfg(world, tmp_path, "sft2", run_dir=str(tmp_path / "ddp"), max_steps=2, accelerator="cpu", devices=2,
             strategy="ddp").to_yaml(config)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "ppllava.train", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distributed_backend=gloo" in done.stderr + done.stdout and "All distributed processes registered" in done.stderr + done.stdout
    assert (tmp_path / "ddp" / "model" / "model.safetensors").exists()


def test_sft_with_oracle_relevance_pools_videos_by_the_records_boxes(world, tmp_path):
    from ppllava.data.dataset import Collator, LLaVADataset
    from ppllava.data.tokenizer import build_world_tokenizer

    tokenizer = build_world_tokenizer()
    config = PPLLaVAConfig.from_name("tiny")
    ds = LLaVADataset(world / "train.json", config, tokenizer)
    videos = [i for i, k in enumerate(ds.kinds) if k == "video"][:3]
    batch = Collator(config, tokenizer.pad_token_id, oracle=True)([ds[i] for i in videos])
    assert batch["video_relevance"].shape == (3, 8, 4, 4)
    assert torch.allclose(batch["video_relevance"].sum((1, 2, 3)), torch.ones(3))
    assert "video_relevance" not in Collator(config, tokenizer.pad_token_id)([ds[i] for i in videos])
    metrics = run(tiny_cfg(world, tmp_path, "sft2", max_steps=2, relevance="oracle"))
    assert metrics["steps"] == 2
    with pytest.raises(ValueError, match="relevance"):
        tiny_cfg(world, tmp_path, "sft2", relevance="perfect")


def test_on_policy_pairs_reject_the_models_own_mistakes(world, tmp_path):
    import json

    from ppllava.data.dataset import read_records
    from ppllava.data.tokenizer import build_world_tokenizer
    from ppllava.evaluate import caption_clauses, normalise_answer
    from ppllava.train.on_policy import on_policy_pairs

    torch.manual_seed(0)
    model = PPLLaVA(PPLLaVAConfig.from_name("tiny"))  # untrained: wrong (or silent) nearly everywhere
    counts = on_policy_pairs(model, world / "train_dpo.jsonl", build_world_tokenizer(), tmp_path / "pairs.jsonl")
    source, written = read_records(world / "train_dpo.jsonl"), read_records(tmp_path / "pairs.jsonl")
    assert [r["id"] for r in written] == [r["id"] for r in source] and counts["model"] + counts["world"] == len(source)
    assert counts == {**{k: sum(r["rejected_source"] == k for r in written) for k in ("model", "world")}, "corrected": 0}
    assert all(r["chosen_source"] == "truth" for r in written)
    for old, new in zip(source, written):
        assert new["chosen"] == old["chosen"]
        if new["rejected_source"] == "world":
            assert new["rejected"] == old["rejected"]
        else:
            assert new["rejected"].strip() and normalise_answer(new["rejected"]) != normalise_answer(new["chosen"])
    # Corrected pairs: the same rejected answers; a chosen one is the truth or the rejected caption
    # less its false clauses, and only a caption that states something false is corrected.
    counts = on_policy_pairs(model, world / "train_dpo.jsonl", build_world_tokenizer(), tmp_path / "corrected.jsonl",
                             correct=True)
    corrected = read_records(tmp_path / "corrected.jsonl")
    assert counts["corrected"] == sum(r["chosen_source"] == "corrected" for r in corrected)
    for plain, new in zip(written, corrected):
        assert new["rejected"] == plain["rejected"]
        if new["chosen_source"] == "corrected":
            assert new["task"] == "caption" and new["rejected_source"] == "model"
            assert set(caption_clauses(new["chosen"])) < set(caption_clauses(plain["chosen"]))
            assert set(caption_clauses(new["chosen"])) < set(caption_clauses(new["rejected"]))
        else:
            assert new["chosen"] == plain["chosen"]
    duplicated = tmp_path / "dup.jsonl"
    duplicated.write_text("".join(json.dumps(r) + "\n" for r in source[:1] * 2))
    with pytest.raises(ValueError, match="unique 'id'"):
        on_policy_pairs(model, duplicated, build_world_tokenizer(), tmp_path / "never.jsonl")
    assert not (tmp_path / "never.jsonl").exists()


def test_dpo_on_policy_trains_on_the_pairs_it_wrote(world, tmp_path):
    sft = run(tiny_cfg(world, tmp_path, "sft2", max_steps=2))
    dpo = run(tiny_cfg(world, tmp_path, "dpo", batch_size=4, max_steps=2, dpo_pairs="on_policy",
                       init_from=str(tmp_path / "sft2" / "model")))
    assert sft["steps"] == 2 and dpo["steps"] == 2
    pairs = tmp_path / "dpo" / "train_dpo_on_policy.jsonl"
    assert pairs.exists() and (tmp_path / "dpo" / "on_policy_counts.json").exists()
    with pytest.raises(ValueError, match="dpo_pairs"):
        tiny_cfg(world, tmp_path, "dpo", dpo_pairs="mine", init_from="x")


def test_a_corrected_answer_strikes_out_only_the_false_clauses():
    from ppllava.train.on_policy import corrected_answer

    truth = "a red circle moves left and a blue star stays still and a green square appears later"
    said = "a blue star stays still and a yellow circle moves up and a green square appears later"
    assert corrected_answer(said, truth, "caption") == "a blue star stays still and a green square appears later"
    assert corrected_answer("a red circle moves right", truth, "caption") is None  # nothing true is left
    assert corrected_answer("a blue star stays still", truth, "caption") is None  # an omission: nothing to strike
    assert corrected_answer("blue", "red", "colour") is None  # one statement: the truth is chosen instead


def test_model_answers_are_generated_once_per_model_and_file(world, tmp_path, monkeypatch):
    """The DPO stage and its controls start from one model on one pairs file: its answers are kept under
    the world, keyed by the weights, the file and the batch size, and read back by the next run; another
    model is another key."""
    from ppllava.data.tokenizer import build_world_tokenizer
    from ppllava.train import on_policy

    torch.manual_seed(0)
    model, tokenizer = PPLLaVA(PPLLaVAConfig.from_name("tiny")), build_world_tokenizer()
    first = on_policy.model_answers(model, world / "train_dpo.jsonl", tokenizer, cache=tmp_path / "answers")
    assert len(list((tmp_path / "answers").glob("*.json"))) == 1
    monkeypatch.setattr(on_policy, "generate_answers", lambda *a, **k: pytest.fail("generated again"))
    assert on_policy.model_answers(model, world / "train_dpo.jsonl", tokenizer, cache=tmp_path / "answers") == first
    with torch.no_grad():
        model.projector.linear_1.weight.add_(1.0)  # another model: its own answers
    with pytest.raises(pytest.fail.Exception, match="generated again"):
        on_policy.model_answers(model, world / "train_dpo.jsonl", tokenizer, cache=tmp_path / "answers")
