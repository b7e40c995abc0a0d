"""Issue #13 §3: the ops and the model stop on bad values and shapes, naming the tensor, axis or
argument at fault; nothing is cropped or carried on silently."""
import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPTextConfig, CLIPTextModel

from ppllava.config import PPLLaVAConfig
from ppllava.model import PPLLaVA
from ppllava.ops import (adaptive_pool3d, extend_clip_positions, extend_clip_text_context, pool_visual_tokens,
                         prompt_guided_pool3d, prompt_relevance, tokenize_clip_prompts, window_geometry)

TOKENIZER = open_clip.get_tokenizer("ViT-B-32")
BAD_VALUES = [float("nan"), float("inf"), float("-inf")]


def tokens(B, grid, D=4, seed=0):
    return torch.randn(B, math.prod(grid), D, generator=torch.Generator().manual_seed(seed))


def relevance_map(B, grid):
    return torch.softmax(torch.rand(B, math.prod(grid), generator=torch.Generator().manual_seed(1)), -1).view(B, *grid)


def spoil(t, value, index=0):
    t = t.clone()
    t.view(-1)[index] = value
    return t


# --- NaN / Inf in each named tensor of the ops ------------------------------------------------
GRID = (4, 4, 4)
OP_CASES = {
    # name: (call with x, s, flag; the tensor to spoil: "x" | "s"; the name the message must give)
    "prompt_guided_pool3d x": (lambda x, s, f: prompt_guided_pool3d(x, s, GRID, kernel=2, check_finite=f), "x", r"x \(visual tokens\)"),
    "prompt_guided_pool3d relevance": (lambda x, s, f: prompt_guided_pool3d(x, s, GRID, kernel=2, check_finite=f), "s", "relevance"),
    "prompt_guided_pool3d x, uniform": (lambda x, s, f: prompt_guided_pool3d(x, None, GRID, kernel=2, check_finite=f), "x", r"x \(visual tokens\)"),
    "adaptive_pool3d x": (lambda x, s, f: adaptive_pool3d(x, GRID, 2, check_finite=f), "x", r"x \(visual tokens\)"),
    **{f"pool_visual_tokens {mode} x": (
        lambda x, s, f, mode=mode: pool_visual_tokens(x, GRID, mode, relevance=s, check_finite=f,
                                                      **({"output_size": 2} if mode in ("adaptive", "prompt") else {})),
        "x", r"x \(visual tokens\)") for mode in ("none", "temporal_mean", "adaptive", "spatial", "prompt")},
    "pool_visual_tokens prompt relevance": (
        lambda x, s, f: pool_visual_tokens(x, GRID, "prompt", relevance=s, output_size=2, check_finite=f), "s", "relevance"),
}


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("case", list(OP_CASES))
def test_non_finite_pooling_inputs_are_named_and_the_flag_switches_the_check_off(case, value):
    call, which, name = OP_CASES[case]
    x, s = tokens(2, GRID), relevance_map(2, GRID)
    if which == "x":
        x = spoil(x, value, index=37)
    else:
        s = spoil(s, value, index=37)
    with pytest.raises(ValueError, match=rf"{name} holds .*first at index"):
        call(x, s, True)
    call(x, s, False)  # off: computes (and propagates the bad value) without a word


@pytest.mark.parametrize("dtype,value", [(torch.float16, 6e4), (torch.bfloat16, 3e38), (torch.float32, 3e38)])
def test_large_finite_tokens_whose_sum_overflows_are_not_refused(dtype, value):
    """The check's fast path is a sum; a sum that overflows must fall back, not raise."""
    x = torch.full((1, math.prod(GRID), 4), value, dtype=dtype)
    pooled, _ = prompt_guided_pool3d(x, relevance_map(1, GRID), GRID, kernel=2)
    assert torch.isfinite(pooled).all()
    with pytest.raises(ValueError, match=r"x \(visual tokens\) holds 0 NaN and 1 Inf"):
        prompt_guided_pool3d(spoil(x, float("inf"), index=5), None, GRID, kernel=2)


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("which", ["patch_embeds", "text_embeds", "logit_scale"])
def test_non_finite_relevance_inputs_are_named(which, value):
    inputs = dict(patch_embeds=torch.randn(1, 2, 3, 3, 8), text_embeds=torch.randn(1, 8), logit_scale=torch.tensor(4.6))
    inputs[which] = spoil(inputs[which].reshape(-1), value).reshape(inputs[which].shape)
    with pytest.raises(ValueError, match=f"{which} holds"):
        prompt_relevance(**inputs)
    prompt_relevance(**inputs, check_finite=False)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_non_finite_clip_position_tables_are_named(value):
    with pytest.raises(ValueError, match=r"table \(CLIP position table\) holds"):
        extend_clip_positions(spoil(torch.randn(77, 8), value, index=8 * 50 + 3))
    text = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        max_position_embeddings=77))
    with torch.no_grad():
        getattr(text, "text_model", text).embeddings.position_embedding.weight[60, 0] = value
    with pytest.raises(ValueError, match="CLIP position table"):
        extend_clip_text_context(text)


# --- windows that leave positions uncovered -----------------------------------------------------
@pytest.mark.parametrize(
    "grid,geometry,axis,dropped",
    [
        ((9, 4, 4), dict(kernel=2), "T", 1),  # the case: 9 frames, temporal kernel 2
        ((8, 5, 4), dict(kernel=2), "H", 1),
        ((8, 4, 7), dict(kernel=(2, 2, 3)), "W", 1),
        ((8, 4, 4), dict(kernel=(1, 1, 1), stride=(3, 1, 1)), "T", 5),  # gaps between windows (stride > kernel)
        ((10, 4, 4), dict(output_size=(4, 2, 2), kernel=(2, 2, 2)), "T", 2),  # derived stride 2 leaves 2 frames
    ],
)
def test_uncovered_positions_are_refused_naming_the_axis_unless_dropped_explicitly(grid, geometry, axis, dropped):
    match = rf"axis {axis}.*kernel \d+ at stride \d+ cover \d+ of the input size {grid['THW'.index(axis)]}; {dropped} position"
    with pytest.raises(ValueError, match=match):
        window_geometry(grid, **geometry)
    x = tokens(1, grid)
    with pytest.raises(ValueError, match=match):
        prompt_guided_pool3d(x, relevance_map(1, grid), grid, **geometry)
    kernel_only = "output_size" not in geometry
    if kernel_only:  # floor mode, opted into: equal to torch's avg_pool3d, which drops the same positions
        out, kernel, stride = window_geometry(grid, **geometry, remainder="drop")
        pooled, _ = prompt_guided_pool3d(x, None, grid, **geometry, remainder="drop")
        ref = F.avg_pool3d(x.reshape(1, *grid, 4).permute(0, 4, 1, 2, 3), kernel, stride)
        torch.testing.assert_close(pooled, ref.permute(0, 2, 3, 4, 1).reshape(1, -1, 4))


def test_unknown_remainder_is_refused():
    with pytest.raises(ValueError, match="remainder must be one of"):
        window_geometry((8, 4, 4), kernel=2, remainder="pad")


@pytest.mark.parametrize("grid", [(3, 5, 5), (2, 7, 4), (1, 3, 3)])
def test_spatial_mode_keeps_llava_next_videos_floor_mode_on_odd_grids(grid):
    x = tokens(2, grid)
    pooled, out = pool_visual_tokens(x, grid, "spatial")
    frames = x.reshape(2 * grid[0], grid[1], grid[2], 4).permute(0, 3, 1, 2)
    ref = F.avg_pool2d(frames, 2)
    assert out == (grid[0], grid[1] // 2, grid[2] // 2)
    torch.testing.assert_close(pooled, ref.permute(0, 2, 3, 1).reshape(2, -1, 4))


@pytest.mark.parametrize(
    "overrides,axis",
    [(dict(num_frames=9), "T"), (dict(num_frames=7, video_kernel=(2, 1, 1)), "T"),
     (dict(num_frames=8, video_kernel=(2, 3, 3)), "H")],
)
def test_the_config_refuses_a_video_the_kernel_does_not_cover(overrides, axis):
    with pytest.raises(ValueError, match=rf"PPLLaVAConfig.num_frames {overrides['num_frames']}.*axis {axis}"):
        PPLLaVAConfig.from_name("tiny", **overrides)
    # Modes that do not use the kernel, or an output size that fixes the windows, take the same video.
    PPLLaVAConfig.from_name("tiny", pooling="temporal_mean", **overrides)
    PPLLaVAConfig.from_name("tiny", video_output_size=(1, 2, 2), **overrides)


# --- numpy / torch integers, floats and bools -----------------------------------------------------
INT_LIKE = [np.int64(2), np.int32(2), torch.tensor(2), np.array(2), (2, np.int64(2), torch.tensor(2)),
            np.array([2, 2, 2]), torch.tensor([2, 2, 2])]


@pytest.mark.parametrize("value", INT_LIKE, ids=repr)
@pytest.mark.parametrize("argument", ["output_size", "kernel", "stride"])
def test_numpy_and_torch_integers_are_python_ints(argument, value):
    given = {"output_size": dict(output_size=value), "kernel": dict(kernel=value),
             "stride": dict(kernel=2, stride=value)}[argument]
    plain = {k: (2 if not isinstance(v, int) else v) for k, v in given.items()}
    result = window_geometry(np.array([8, 4, 4]), **given)
    assert result == window_geometry((8, 4, 4), **plain)
    assert all(type(v) is int for triple in result for v in triple)
    grid = torch.Size([8, 4, 4])
    x = tokens(1, grid)
    torch.testing.assert_close(prompt_guided_pool3d(x, None, grid, **given)[0], prompt_guided_pool3d(x, None, (8, 4, 4), **plain)[0])


BAD_NUMBERS = [2.0, 2.5, np.float64(2.0), torch.tensor(2.0), (2, 2.0, 2), True, np.bool_(True), torch.tensor(True),
               (2, False, 2), "222"]


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize("argument", ["output_size", "kernel", "stride"])
def test_floats_and_bools_are_refused_naming_the_argument(argument, value):
    given = {"output_size": dict(output_size=value), "kernel": dict(kernel=value),
             "stride": dict(kernel=2, stride=value)}[argument]
    with pytest.raises(ValueError, match=rf"^{argument}(\[\d\])? must be an int"):
        window_geometry((8, 4, 4), **given)
    with pytest.raises(ValueError, match=rf"^{argument}"):
        prompt_guided_pool3d(tokens(1, (8, 4, 4)), None, (8, 4, 4), **given)


def test_a_float_grid_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"grid\[1\] must be an int, got 4.0"):
        prompt_guided_pool3d(tokens(1, (8, 4, 4)), None, (8, 4.0, 4), kernel=2)


# --- the model: batch faults, bad values, uncovered frames -----------------------------------------
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PPLLaVA(PPLLaVAConfig.from_name("tiny")).eval()


@pytest.fixture
def no_compute(model, monkeypatch):
    """The towers may not run: every fault must be named before any compute."""
    def refuse(*args, **kwargs):
        raise AssertionError("the vision tower ran before the fault was named")

    monkeypatch.setattr(model.vision_tower, "forward", refuse)  # the global CLIP loss calls it whole
    monkeypatch.setattr(model.vision_tower.embeddings, "forward", refuse)  # every pass starts here
    monkeypatch.setattr(model.language_model, "forward", refuse)
    return model


def clip_ids(n):
    return tokenize_clip_prompts(["where is the red star"] * n, TOKENIZER, 248)


def video(n=2, frames=8, channels=3, size=64):
    return torch.randn(n, frames, channels, size, size, generator=torch.Generator().manual_seed(0))


def video_ids(model, n=2, frames=8):
    count = model.video_token_count(frames)
    return torch.tensor([[1, 10, *([model.config.video_token_id] * count), 12]] * n)


def call(entry, model, ids, videos, clip, **extra):
    if entry == "forward":
        return model(ids, pixel_values_videos=videos, clip_input_ids=clip, **extra)
    if entry == "generate":
        return model.generate(ids, pixel_values_videos=videos, clip_input_ids=clip, max_new_tokens=1, **extra)
    if entry == "embed_inputs":
        return model.embed_inputs(ids, pixel_values_videos=videos, clip_input_ids=clip, **extra)
    if entry == "video_tokens":
        prompts = model.encode_prompts(clip) if clip is not None else None
        return model.video_tokens(videos, prompts, extra.get("video_relevance"))
    return model.relevance_maps(videos, clip)


ENTRIES = ["forward", "generate", "embed_inputs", "video_tokens", "relevance_maps"]
SHAPE = r"\(n, T, 3, 64, 64\)"
BATCH_FAULTS = {
    # name: (ids rows, video, CLIP prompts, message)
    "one CLIP prompt for two samples": (2, video(2), 1, r"(clip_input_ids has 1 prompt\(s\) for 2|prompt_embeds .*n = 2 videos)"),
    "1-channel pixels": (2, video(2, channels=1), 2, rf"pixel_values_videos must have shape {SHAPE}.*\(2, 8, 1, 64, 64\)"),
    "a 4-D video": (2, video(1)[0], 2, rf"pixel_values_videos must have shape {SHAPE}, got \(8, 3, 64, 64\)"),
    "wrong pixel size": (2, video(2, size=32), 2, rf"pixel_values_videos must have shape {SHAPE}.*\(2, 8, 3, 32, 32\)"),
    "no videos (B = 0)": (2, video(0), 2, r"pixel_values_videos is empty: shape \(0, 8, 3, 64, 64\)"),
    "no frames": (2, video(2, frames=0), 2, r"pixel_values_videos is empty"),
    "input_ids with no rows": (0, video(2), 2, r"input_ids must have shape \(B, L\).*got \(0, "),
}


@pytest.mark.parametrize("entry,fault", [(e, f) for e in ENTRIES for f in BATCH_FAULTS
                                         if not (f == "input_ids with no rows" and e in ("video_tokens", "relevance_maps"))])
def test_batch_faults_are_named_before_any_compute(no_compute, entry, fault):
    rows, videos, prompts, match = BATCH_FAULTS[fault]
    with pytest.raises(ValueError, match=match), torch.no_grad():
        call(entry, no_compute, video_ids(no_compute, 2)[:rows], videos, clip_ids(prompts))


@pytest.mark.parametrize(
    "images,match",
    [
        (dict(pixel_values=torch.randn(1, 1, 1, 64, 64)), r"pixel_values must have shape \(n, max_crops, 3, 64, 64\)"),
        (dict(pixel_values=torch.randn(1, 1, 3, 48, 48)), r"pixel_values must have shape .*got \(1, 1, 3, 48, 48\)"),
        (dict(pixel_values=torch.randn(1, 3, 64, 64)), r"pixel_values must have shape"),
        (dict(pixel_values=torch.randn(2, 1, 3, 64, 64), image_sizes=[(64, 64)]), "2 image.*image_sizes gives 1"),
        (dict(image_crops=[1, 1]), "1 image.*image_crops gives 2"),
        (dict(image_crops=[3]), r"image_crops of image\(s\) \[0\] = \[3\] must be in \[1, 1\]"),
    ],
)
def test_image_batch_faults_are_named_before_any_compute(no_compute, images, match):
    kwargs = {**dict(pixel_values=torch.randn(1, 1, 3, 64, 64), image_sizes=[(64, 64)], image_crops=[1]), **images}
    ids = torch.tensor([[1, *([no_compute.config.image_token_id] * no_compute.image_token_count((64, 64), 1))]])
    with pytest.raises(ValueError, match=match):
        no_compute(ids, clip_input_ids=clip_ids(1), **kwargs)


def test_video_relevance_of_the_wrong_shape_or_without_a_video_is_refused(no_compute):
    with pytest.raises(ValueError, match=r"video_relevance must have shape \(n, T, g, g\) = \(2, 8, 4, 4\), got \(2, 8, 4\)"):
        no_compute(video_ids(no_compute), pixel_values_videos=video(2), video_relevance=torch.rand(2, 8, 4))
    with pytest.raises(ValueError, match="video_relevance was given without pixel_values_videos"):
        no_compute(video_ids(no_compute)[:, :2], video_relevance=torch.rand(2, 8, 4, 4))


def test_prompt_pooling_without_clip_prompts_is_refused_before_compute(no_compute):
    with pytest.raises(ValueError, match="needs clip_input_ids"):
        no_compute(video_ids(no_compute), pixel_values_videos=video(2))


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("entry", ["forward", "generate", "embed_inputs", "video_tokens"])
def test_non_finite_video_relevance_is_named_before_compute(no_compute, entry, value):
    relevance = spoil(torch.rand(2, 8, 4, 4), value, index=100)
    with pytest.raises(ValueError, match=r"video_relevance holds .*first at index \(0, 6, 1, 0\)"), torch.no_grad():
        call(entry, no_compute, video_ids(no_compute), video(2), None, video_relevance=relevance)


def spoilt_model(name, check_finite=True, **overrides):
    """A tiny model whose `name` module computes NaN: the fault reaches the visual tokens or the map."""
    torch.manual_seed(0)
    model = PPLLaVA(PPLLaVAConfig.from_name("tiny", check_finite=check_finite, **overrides)).eval()
    with torch.no_grad():
        model.get_submodule(name).weight[0, 0] = float("nan")
    return model


@pytest.mark.parametrize(
    "module,overrides,media,match",
    [
        ("projector.linear_1", {}, "video", r"x \(visual tokens\)"),
        ("projector.linear_1", dict(pooling="spatial"), "video", r"x \(visual tokens\)"),
        ("visual_projection", {}, "video", "patch_embeds"),
        ("projector.linear_1", {}, "image", r"x \(visual tokens\)"),
        ("projector.linear_1", dict(pooling="none"), "image", "image visual tokens"),
    ],
)
def test_non_finite_visual_tokens_in_the_model_are_named_and_the_config_switches_it_off(module, overrides, media, match):
    model = spoilt_model(module, **overrides)
    cfg = model.config
    if media == "video":
        ids, kwargs = video_ids(model, 1), dict(pixel_values_videos=video(1))
    else:
        ids = torch.tensor([[1, *([cfg.image_token_id] * model.image_token_count((64, 64), 1))]])
        kwargs = dict(pixel_values=torch.randn(1, 1, 3, 64, 64), image_sizes=[(64, 64)], image_crops=[1])
    with pytest.raises(ValueError, match=match), torch.no_grad():
        model(ids, clip_input_ids=clip_ids(1), **kwargs)
    off = spoilt_model(module, check_finite=False, **overrides)
    with torch.no_grad():
        assert not torch.isfinite(off(ids, clip_input_ids=clip_ids(1), **kwargs).logits).all()


@pytest.mark.parametrize("frames,dropped", [(9, 1), (7, 1), (3, 1)])
def test_a_video_the_temporal_kernel_does_not_cover_is_refused(no_compute, frames, dropped):
    with pytest.raises(ValueError, match=rf"a video of {frames} frames cannot be pooled as configured: "
                                         rf"axis T \(frames\).*{dropped} position"):
        no_compute.video_token_count(frames)
    ids = torch.tensor([[1, *([no_compute.config.video_token_id] * 16)]])
    with pytest.raises(ValueError, match=rf"{frames} frames cannot be pooled.*axis T"):
        no_compute(ids, pixel_values_videos=video(1, frames=frames), clip_input_ids=clip_ids(1))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_a_temperature_that_is_not_finite_and_positive_is_refused(temperature):
    x = torch.randn(1, 2 * 4 * 4, 8)
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        prompt_guided_pool3d(x, torch.rand(1, 2, 4, 4), (2, 4, 4), kernel=2, temperature=temperature)
    with pytest.raises(ValueError, match="PPLLaVAConfig.pool_temperature"):
        PPLLaVAConfig.from_name("tiny", pool_temperature=temperature)
