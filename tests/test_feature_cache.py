"""The frozen vision tower's feature cache: the tower's own outputs, refused on a trainable tower, and
SFT and DPO trained with it end on the same weights as without it."""
import re

import pytest
import torch
from safetensors.torch import load_file

from ppllava.config import PPLLaVAConfig
from ppllava.data.dataset import LLaVADataset
from ppllava.data.tokenizer import build_world_tokenizer
from ppllava.data.video_features import tower_digest
from ppllava.data.world import WorldSpec, write_world
from ppllava.evaluate import generate_answers
from ppllava.model import PPLLaVA
from ppllava.model.feature_cache import FrozenFeatureCache
from ppllava.train.config import TrainConfig
from ppllava.train.run import run


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_world(root, WorldSpec(), train=32, val=8, test=0, long_per_length=0, progress=False)
    return root


def frozen_model() -> PPLLaVA:
    torch.manual_seed(0)
    return PPLLaVA(PPLLaVAConfig.from_name("tiny")).requires_grad_(False).eval()


def test_cached_features_are_the_towers_and_each_frame_is_computed_once():
    model = frozen_model()
    frames = torch.randn(3, 3, 64, 64)
    batch = torch.stack([frames[0], frames[1], frames[0], frames[2]])  # a frame twice, as DPO's pairs are
    plain = model._patch_features(batch)
    model.feature_cache = FrozenFeatureCache(max_mb=1)
    first, again = model._patch_features(batch), model._patch_features(batch[[3, 1]])
    assert torch.equal(first, plain) and torch.equal(again, plain[[3, 1]])
    cache = model.feature_cache
    assert (cache.misses, cache.hits, len(cache.stored)) == (3, 3, 3)  # batch: 3 new (one twice) + 1 seen; then 2 seen
    assert cache.bytes == 3 * plain[0].numel() * 4


def test_a_full_cache_computes_what_it_cannot_keep():
    model = frozen_model()
    frames = torch.randn(4, 3, 64, 64)
    one_frame_mb = model._patch_features(frames[:1]).numel() * 4 / 2 ** 20
    model.feature_cache = FrozenFeatureCache(max_mb=2.5 * one_frame_mb)
    assert torch.equal(model._patch_features(frames), frozen_model()._patch_features(frames))
    assert len(model.feature_cache.stored) == 2 and model.feature_cache.bytes <= model.feature_cache.max_bytes


def test_the_cache_refuses_a_trainable_tower_and_a_clip_stage():
    model = frozen_model()
    model.vision_tower.requires_grad_(True)
    model.feature_cache = FrozenFeatureCache(max_mb=1)
    with pytest.raises(ValueError, match="vision tower is trainable"):
        model._patch_features(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="max_mb > 0"):
        FrozenFeatureCache(0)
    with pytest.raises(ValueError, match=r"vision_cache_mb = 64 .* clip stage trains it"):
        TrainConfig(stage="clip", vision_cache_mb=64)


def weights(path):
    return load_file(path / "model" / "model.safetensors")


def cache_line(text: str):
    found = re.findall(r"vision feature cache: (\d+) frames read, (\d+) computed", text)
    assert found, text[-2000:]
    return [tuple(map(int, f)) for f in found]


def test_sft_and_dpo_end_on_the_same_weights_with_the_cache(world, tmp_path, capsys):
    common = dict(preset="tiny", data=str(world), batch_size=8, lr=1e-3, limit_val_batches=1,
                  mix={"video": 0.5, "image": 0.3, "multi": 0.2})
    for name, mb in (("plain", 0), ("cached", 64)):
        run(TrainConfig(stage="sft2", run_dir=str(tmp_path / name / "sft2"), max_epochs=2, vision_cache_mb=mb, **common))
        run(TrainConfig(stage="dpo", run_dir=str(tmp_path / name / "dpo"), max_steps=2, vision_cache_mb=mb,
                        init_from=str(tmp_path / name / "sft2" / "model"), **{**common, "batch_size": 4, "lr": 1e-4}))
    for stage in ("sft2", "dpo"):
        plain, cached = weights(tmp_path / "plain" / stage), weights(tmp_path / "cached" / stage)
        assert plain.keys() == cached.keys() and all(torch.equal(plain[k], cached[k]) for k in plain), stage
    (sft_read, sft_computed), (dpo_read, dpo_computed) = cache_line(capsys.readouterr().out)
    # SFT's second epoch reads every training frame from memory; DPO computes each video's frames once for
    # the policy's chosen and rejected answers and the reference's two passes.
    assert sft_read >= sft_computed > 0 and dpo_read >= 3 * dpo_computed > 0


def test_models_of_one_tower_share_a_cache_when_scored_and_answer_as_without_it(world):
    """Notebook 07 scores every row through one cache per tower: the second model reads the first's features
    and each model's answers are those it gives without a cache."""
    first = frozen_model()
    torch.manual_seed(1)
    second = PPLLaVA(PPLLaVAConfig.from_name("tiny")).requires_grad_(False).eval()  # another projector and LLM
    second.vision_tower.load_state_dict(first.vision_tower.state_dict())
    assert tower_digest(first) == tower_digest(second)
    data = LLaVADataset(world / "val.json", first.config, build_world_tokenizer())
    plain = [generate_answers(model, data, max_new_tokens=4) for model in (first, second)]
    shared = FrozenFeatureCache(max_mb=64)
    first.feature_cache = second.feature_cache = shared
    cached = [generate_answers(first, data, max_new_tokens=4)]
    computed = shared.misses
    cached.append(generate_answers(second, data, max_new_tokens=4))
    assert cached == plain and computed > 0 and shared.misses == computed  # the second model ran no frame
    assert plain[0] != plain[1]  # two models, not one twice
