"""The video feature store: a frozen tower's features of each video, computed once, served in place of the
pixels. The model reads features alone as it reads the pixels; the store's features are the tower's; a
training run with the store ends where one without it ends; bad uses are refused by name."""
import os
import re

import pytest
import torch
from safetensors.torch import load_file

from ppllava.config import PPLLaVAConfig
from ppllava.data.dataset import Collator, LLaVADataset, model_inputs
from ppllava.data.records import RecordError
from ppllava.data.tokenizer import build_world_tokenizer
from ppllava.data.video_features import VideoFeatureStore
from ppllava.data.world import WorldSpec, write_needle_world
from ppllava.evaluate import generate_answers
from ppllava.model import PPLLaVA
from ppllava.train.config import TrainConfig
from ppllava.train.run import run


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("needles")
    write_needle_world(root, 16, WorldSpec(), train=12, val=4, test=0, progress=False)
    return root


def frozen(**overrides) -> PPLLaVA:
    torch.manual_seed(0)
    config = PPLLaVAConfig.from_name("tiny", **{"num_frames": 16, **overrides})
    model = PPLLaVA(config).eval()
    model.vision_tower.requires_grad_(False)
    return model


def batch_of(world, model, store=None, oracle=False, count=4):
    data = LLaVADataset(world / "train.json", model.config, build_world_tokenizer(), video_features=store)
    return Collator(model.config, 0, oracle=oracle)([data[i] for i in range(count)])


@pytest.mark.parametrize("overrides", [{}, {"pooling": "adaptive", "video_output_size": [4, 2, 2]},
                                       {"pooling": "temporal_mean"}, {"pooling": "none"}, {"pooling": "fastv"}])
def test_features_alone_give_the_logits_of_the_pixels(world, overrides):
    model = frozen(**overrides)
    batch = model_inputs(batch_of(world, model))
    pixels = batch.pop("pixel_values_videos")
    features = model.video_features(pixels)
    with torch.no_grad():
        assert torch.equal(model(**batch, pixel_values_videos=pixels).logits, model(**batch, video_features=features).logits)


def test_the_store_serves_the_towers_features_and_reads_them_back(world, tmp_path):
    model = frozen()
    store = VideoFeatureStore(tmp_path / "features", model)
    served = batch_of(world, model, store)
    assert "pixel_values_videos" not in served and store.computed == 4 and store.read == 0
    plain = batch_of(world, model)
    assert torch.equal(served["video_features"], model.video_features(plain["pixel_values_videos"]))
    for key in ("input_ids", "labels", "clip_input_ids"):  # the same sample otherwise
        assert torch.equal(served[key], plain[key])
    again = VideoFeatureStore(tmp_path / "features", model)  # another run (or process) on the same world
    assert torch.equal(batch_of(world, model, again)["video_features"], served["video_features"])
    assert (again.computed, again.read) == (0, 4)
    # the oracle's relevance needs the frames' count, which the features give
    assert torch.equal(batch_of(world, model, again, oracle=True)["video_relevance"],
                       batch_of(world, model, oracle=True)["video_relevance"])


def test_another_tower_or_a_rewritten_video_is_another_key(world, tmp_path):
    model = frozen()
    store = VideoFeatureStore(tmp_path / "features", model)
    data = LLaVADataset(world / "train.json", model.config, build_world_tokenizer(), video_features=store)
    first = store.path(data, 0)
    with torch.no_grad():
        model.vision_tower.embeddings.patch_embedding.weight[0, 0, 0, 0] += 1e-3
    other = VideoFeatureStore(tmp_path / "features", model)
    assert other.directory(data) != store.directory(data)
    video = world / data.records[0]["video"]
    stat = video.stat()
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    try:
        assert store.path(data, 0) != first
    finally:
        os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_damaged_store_file_is_named_not_read(world, tmp_path):
    model = frozen()
    store = VideoFeatureStore(tmp_path / "features", model)
    data = LLaVADataset(world / "train.json", model.config, build_world_tokenizer(), video_features=store)
    data[0]
    path = store.path(data, 0)
    path.write_bytes(path.read_bytes()[:100])  # cut short
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} is not a readable video feature file"):
        data[0]
    torch.save({"unique": torch.zeros(2, 9, 64), "index": torch.tensor([0, 1]), "repeated": 0}, path)
    with pytest.raises(ValueError, match=r"features of shape \(2, 9, 64\) .* not \(U, 16, 64\)"):
        data[0]


def weights(path):
    return load_file(path / "model" / "model.safetensors")


def test_training_with_the_store_ends_on_the_weights_of_training_without_it(world, tmp_path):
    common = dict(stage="sft2", preset="tiny", data=str(world), batch_size=4, lr=1e-3, max_epochs=2, mix={"video": 1.0},
                  model={"num_frames": 16})
    run(TrainConfig(run_dir=str(tmp_path / "plain"), **common))
    run(TrainConfig(run_dir=str(tmp_path / "stored"), video_feature_store=True, **common))
    plain, stored = weights(tmp_path / "plain"), weights(tmp_path / "stored")
    assert plain.keys() == stored.keys()
    assert all(torch.equal(stored[k], plain[k]) for k in plain)  # the same features, so the same steps, bit for bit
    assert len(list((world / "features").rglob("*.pt"))) == 16  # the 12 training and 4 validation videos, once


def test_bad_uses_are_refused_by_name(world, tmp_path):
    with pytest.raises(ValueError, match="video_feature_store .* not stage 'clip'"):
        TrainConfig(stage="clip", video_feature_store=True)
    trainable = frozen()
    trainable.vision_tower.requires_grad_(True)
    with pytest.raises(ValueError, match="this tower is trainable"):
        VideoFeatureStore(tmp_path, trainable)
    for pooling, match in (("dominant", "attention and keys"), ("random", "draws by each video's pixels")):
        with pytest.raises(ValueError, match=match):
            VideoFeatureStore(tmp_path, frozen(pooling=pooling))
    with pytest.raises(ValueError, match="set num_workers to 0, got 1"):
        run(TrainConfig(stage="sft2", preset="tiny", data=str(world), run_dir=str(tmp_path / "r"), num_workers=1,
                        video_feature_store=True, max_steps=1, model={"num_frames": 16}))
    model = frozen()
    store = VideoFeatureStore(tmp_path / "features", model)
    records = [dict(LLaVADataset(world / "train.json", model.config, build_world_tokenizer()).records[0],
                    id="gone", video="videos/no-such.mp4")]
    data = LLaVADataset(records, model.config, build_world_tokenizer(), media_root=world, video_features=store)
    with pytest.raises(RecordError, match=r"gone.*no-such\.mp4"):
        data[0]
    with pytest.raises(ValueError, match="without a VideoFeatureStore"):
        generate_answers(model, data)
    with pytest.raises(ValueError, match=r"g\*g = 16 patches a frame"):
        model(torch.tensor([[model.config.video_token_id] * 4]), video_features=torch.zeros(1, 20, 64),
              clip_input_ids=torch.ones(1, 3, dtype=torch.long))


@pytest.mark.parametrize("overrides", [{}, {"pooling": "adaptive", "video_output_size": [4, 2, 2]}, {"pooling": "none"},
                                       {"pooling": "temporal_mean"}, {"weighting": "peak", "pool_margin": 4.0},
                                       {"pooling": "adaptive", "video_output_size": [3, 2, 2]},  # 16 frames / 3: not tiling
                                       {"pool_position": "before_projector"}])
def test_repeated_frames_projected_once_give_the_plain_tokens_and_gradients(world, overrides, monkeypatch):
    """The needle videos hold still for runs of frames: `distinct_frames` finds the runs, the projector and
    CLIP's projection run once per distinct frame, and the tokens equal the plain formulation's (every
    frame projected) to float rounding (the modes that mix windows pool from the distinct rows, summing in
    another order; `none` and pooling before the projector bit for bit), the projector's gradients too."""
    from ppllava.model import ppllava as core

    model = frozen(**overrides).train()
    batch = model_inputs(batch_of(world, model))
    features = model.video_features(batch.pop("pixel_values_videos")).detach()
    g = model.patch_grid
    distinct, inverse = core.distinct_frames(features, g * g)
    assert distinct.shape[0] < features.shape[0] * 16  # fewer than the 4 x 16 frames: the needle world's still scenes
    assert torch.equal(distinct[inverse].reshape(features.shape), features)

    def tokens_and_grads():
        model.zero_grad()
        out = model(**batch, video_features=features)
        out.loss.backward()
        return out.logits.detach(), [p.grad.clone() for p in model.projector.parameters()]

    fast = tokens_and_grads()
    monkeypatch.setattr(core, "distinct_frames", lambda patches, cells: None)
    plain = tokens_and_grads()
    if model.config.pool_position == "after_projector" and model._window_mix((16, g, g)) is not None:
        torch.testing.assert_close(fast[0], plain[0], rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(fast[0], plain[0])
    for a, b in zip(fast[1], plain[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_distinct_frames_keep_every_run_and_step_aside_for_gradients():
    from ppllava.model.ppllava import distinct_frames

    a, b = torch.randn(4, 3), torch.randn(4, 3)  # two frames of 4 patches, width 3
    video = torch.stack([a, a, b, b, b, a]).reshape(1, 6 * 4, 3)  # runs a a | b b b | a: three distinct
    distinct, inverse = distinct_frames(video, 4)
    assert distinct.shape == (3, 4, 3) and inverse.tolist() == [0, 0, 1, 1, 1, 2]
    assert distinct_frames(torch.randn(2, 6 * 4, 3), 4) is None  # nothing repeats: the plain path
    assert distinct_frames(video.clone().requires_grad_(True), 4) is None  # a trainable tower's features
