import dataclasses

import pytest

from ppllava.config import PRESETS, PPLLaVAConfig


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_yaml(name, tmp_path):
    cfg = PPLLaVAConfig.from_name(name)
    path = tmp_path / f"{name}.yaml"
    cfg.to_yaml(path)
    assert PPLLaVAConfig.from_yaml(path) == cfg
    assert PPLLaVAConfig.from_yaml(cfg.to_yaml()) == cfg
    assert "!!python" not in path.read_text()  # plain YAML, nothing to eval


def test_paper_preset_is_the_published_shape():
    cfg = PPLLaVAConfig.from_name("paper")
    assert (cfg.image_size, cfg.patch_size, cfg.patch_grid) == (336, 14, 24)
    assert (cfg.num_frames, cfg.video_kernel, cfg.image_kernel) == (32, (2, 3, 3), (1, 3, 3))
    assert cfg.text_context_length == 248 and cfg.dtype == "bfloat16"
    assert (cfg.llm_hidden, cfg.llm_layers, cfg.vision_width, cfg.vision_layers) == (4096, 32, 1024, 24)


def test_tiny_grid_lets_objects_span_patches():
    cfg = PPLLaVAConfig.from_name("tiny")
    assert cfg.image_size == 64 and cfg.patch_size == 16 and cfg.patch_grid == 4


def test_overrides_and_teaching_switches():
    cfg = PPLLaVAConfig.from_name("tiny", weighting="normalized", clip_prompt="conversation",
                                  pool_position="before_projector", clip_text_trainable=True,
                                  extension_init="random", video_kernel=[2, 4, 4])
    assert cfg.video_kernel == (2, 4, 4) and cfg.name == "tiny"
    fields = {f.name for f in dataclasses.fields(cfg)}
    assert {"weighting", "clip_prompt", "pool_position", "clip_text_trainable", "extension_init"} <= fields


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(pooling="max"), "PPLLaVAConfig.pooling"),
        (dict(weighting="mean"), "PPLLaVAConfig.weighting"),
        (dict(video_kernel=(2, 3)), "PPLLaVAConfig.video_kernel"),
        (dict(video_kernel=(2, 9, 1)), r"video_kernel\[1\] = 9 exceeds"),
        (dict(image_size=65), "image_size 65"),
        (dict(llm_heads=3), "llm_heads 3"),
        (dict(pool_temperature=0.0), "pool_temperature"),
        (dict(clip_extended_context=250), "clip_extended_context 250"),
        (dict(pooling="adaptive"), "video_output_size"),
        (dict(num_frames=0), "num_frames"),
    ],
)
def test_validation_names_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        PPLLaVAConfig.from_name("tiny", **overrides)


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        PPLLaVAConfig.from_name("huge")
    with pytest.raises(ValueError, match="num_frame"):
        PPLLaVAConfig.from_name("tiny", num_frame=4)
    with pytest.raises(ValueError, match="unknown PPLLaVAConfig fields"):
        PPLLaVAConfig.from_yaml("name: tiny\nkernel: [1, 2, 2]\n")


# --- every field's type is checked against its annotation, naming the field and the value -------------

@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(num_frames="8"), r"PPLLaVAConfig.num_frames must be an int, got '8' \(str\)"),  # int refuses str
        (dict(num_frames=8.0), r"PPLLaVAConfig.num_frames must be an int, got 8.0 \(float\)"),  # ... float
        (dict(llm_layers=True), r"PPLLaVAConfig.llm_layers must be an int, got True \(bool\)"),  # ... bool
        (dict(pool_temperature="0.1"), r"PPLLaVAConfig.pool_temperature must be a number, got '0.1'"),  # float refuses str
        (dict(pool_temperature=False), r"PPLLaVAConfig.pool_temperature must be a number, got False"),  # ... bool
        (dict(extend_clip_context=1), r"PPLLaVAConfig.extend_clip_context must be a bool, got 1 \(int\)"),
        (dict(pooling=3), r"PPLLaVAConfig.pooling must be a string, got 3 \(int\)"),
        (dict(video_kernel=[2, 2.0, 2]), r"PPLLaVAConfig.video_kernel\[1\] must be an int, got 2.0"),  # tuple items
        (dict(video_kernel="222"), r"PPLLaVAConfig.video_kernel must be a tuple \(int, int, int\), got '222'"),
        (dict(video_stride=[1, 1]), r"PPLLaVAConfig.video_stride must have 3 items, got 2"),  # Optional[Tuple]
        (dict(video_output_size=[4, "2", 2]), r"PPLLaVAConfig.video_output_size\[1\] must be an int, got '2'"),
        (dict(image_grid_pinpoints=[[64, 64], [64]]), r"PPLLaVAConfig.image_grid_pinpoints\[1\] must have 2 items"),
        (dict(image_grid_pinpoints=[[64, 0]]), r"image_grid_pinpoints must hold positive \(H, W\) pairs, got \(64, 0\)"),
        (dict(llm_rms_eps=0.0), "PPLLaVAConfig.llm_rms_eps must be > 0, got 0.0"),
        (dict(llm_max_positions=0), "PPLLaVAConfig.llm_max_positions must be >= 1, got 0"),
    ],
)
def test_field_types_are_checked(overrides, match):
    with pytest.raises(ValueError, match=match):
        PPLLaVAConfig.from_name("tiny", **overrides)


def test_lists_become_tuples_and_numbers_widen_to_floats():
    cfg = PPLLaVAConfig.from_name("tiny", video_kernel=[2, 2, 2], image_grid_pinpoints=[[64, 64]], pool_temperature=1)
    assert cfg.video_kernel == (2, 2, 2) and cfg.image_grid_pinpoints == ((64, 64),) and cfg.pool_temperature == 1


@pytest.mark.parametrize("text,match", [
    ("- name: tiny\n- num_frames: 4\n", "expected a mapping of PPLLaVAConfig fields, got list"),
    ("tiny\n", "expected a mapping of PPLLaVAConfig fields, got str"),
    ("", "expected a mapping of PPLLaVAConfig fields, got NoneType"),
    ("name: [tiny\n", "not valid YAML"),
    ("num_frames: abc\n", r"PPLLaVAConfig.num_frames must be an int, got 'abc'"),
])
def test_from_yaml_names_the_file(tmp_path, text, match):
    path = tmp_path / "model.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        PPLLaVAConfig.from_yaml(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        PPLLaVAConfig.from_yaml(tmp_path / "missing.yaml")
