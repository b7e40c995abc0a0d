"""Checkpoints from local paths only: the kit's own format, LLaVA-NeXT(-Video) and CLIP.

    model = load_pretrained("runs/x/model")                       # the kit's own
    model = from_llava_next("llava-v1.6-vicuna-7b-hf", clip="clip-vit-large-patch14-336",
                            pooling="prompt", num_frames=32)      # Hugging Face layouts

Missing and unexpected keys are always reported; loading fails on them unless `strict=False`,
in which case they are printed as a warning and kept on `model.load_report`.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from safetensors.torch import load_file, save_model
from transformers import CONFIG_MAPPING, AutoConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

from ppllava.config import PPLLaVAConfig
from ppllava.model.open_clip_weights import convert_text_tower, read_state_dict
from ppllava.model.ppllava import PPLLaVA

PathLike = Union[str, Path]
WEIGHTS, CONFIG = "model.safetensors", "config.yaml"


def _check_report(report: Dict[str, List[str]], source: str, strict: bool) -> None:
    problems = {k: v for k, v in report.items() if v}
    if not problems:
        return
    lines = [f"{k} ({len(v)}): {', '.join(v[:8])}{' ...' if len(v) > 8 else ''}" for k, v in problems.items()]
    message = f"loading {source}: " + "; ".join(lines)
    if strict:
        raise ValueError(message + " (pass strict=False to load anyway)")
    warnings.warn(message, stacklevel=3)


def _as_report(info: Dict[str, list], drop=lambda kind, key: False) -> Dict[str, List[str]]:
    """transformers' loading info as {kind: [key, ...]}, minus the keys `drop` accounts for."""
    return {kind: [str(k) for k in keys if not drop(kind, str(k))] for kind, keys in info.items()}


def save_pretrained(model: PPLLaVA, directory: PathLike) -> Path:
    """Write config.yaml, the towers' Hugging Face configs and model.safetensors to `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.to_yaml(directory / CONFIG)
    for name in ("vision_config", "clip_text_config", "llm_config"):
        (directory / f"{name}.json").write_text(getattr(model, name).to_json_string())
    save_model(model, str(directory / WEIGHTS))
    return directory


def _hf_config(path: Path):
    data = json.loads(path.read_text())
    if data.get("model_type") not in CONFIG_MAPPING:
        raise ValueError(f"{path}: unknown model_type {data.get('model_type')!r}")
    return CONFIG_MAPPING[data["model_type"]].from_dict(data)


def load_pretrained(directory: PathLike, *, strict: bool = True, **overrides) -> PPLLaVA:
    """The kit's own checkpoint, as written by `save_pretrained`. `overrides` change config
    fields that do not change the weights' shapes (pooling mode, temperature, ...)."""
    directory = Path(directory)
    for name in (CONFIG, WEIGHTS):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory / name} is missing: not a ppllava checkpoint directory")
    data = PPLLaVAConfig.from_yaml(directory / CONFIG).to_dict()
    config = PPLLaVAConfig.from_dict({**data, **overrides})
    model = PPLLaVA(config, vision_config_=_hf_config(directory / "vision_config.json"),
                    clip_text_config_=_hf_config(directory / "clip_text_config.json"),
                    llm_config_=_hf_config(directory / "llm_config.json"))
    try:
        state = load_file(str(directory / WEIGHTS))
    except Exception as err:  # a file cut short on disk, or not safetensors at all
        raise ValueError(f"{directory / WEIGHTS} cannot be read ({err}); the checkpoint may be incomplete") from err
    result = model.load_state_dict(state, strict=False)
    model.load_report = {"missing_keys": list(result.missing_keys), "unexpected_keys": list(result.unexpected_keys)}
    _check_report(model.load_report, str(directory), strict)
    return model


def _clip_overrides(overrides: dict, text, set_context: bool) -> None:
    """Describe a loaded CLIP text tower in the kit config (unless the caller said otherwise)."""
    for field, value in (("clip_vocab_size", text.vocab_size), ("clip_embed_dim", text.projection_dim),
                         ("text_width", text.hidden_size), ("text_layers", text.num_hidden_layers),
                         ("text_heads", text.num_attention_heads)):
        overrides.setdefault(field, value)
    if set_context:
        overrides.setdefault("clip_context", text.max_position_embeddings)


def _config_from_towers(vision, text, llava_config, overrides) -> PPLLaVAConfig:
    """A kit config describing loaded towers; `overrides` set the method's switches."""
    fields = dict(
        name="llava_next", image_size=vision.image_size, patch_size=vision.patch_size, vision_width=vision.hidden_size,
        vision_layers=vision.num_hidden_layers, vision_heads=vision.num_attention_heads,
        vision_feature_layer=llava_config.vision_feature_layer,
        llm_family="qwen2" if text.model_type == "qwen2" else "llama", llm_hidden=text.hidden_size,
        llm_layers=text.num_hidden_layers, llm_heads=text.num_attention_heads,
        llm_kv_heads=text.num_key_value_heads or text.num_attention_heads, llm_intermediate=text.intermediate_size,
        llm_vocab_size=text.vocab_size, llm_max_positions=text.max_position_embeddings,
        image_token_id=llava_config.image_token_id,
        image_grid_pinpoints=tuple(tuple(p) for p in llava_config.image_grid_pinpoints),
    )
    video_token = getattr(llava_config, "video_token_id", None)
    fields["video_token_id"] = video_token if video_token is not None else fields["image_token_id"] + 1
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(text, name, None)
        if isinstance(value, int):
            fields[name] = value
    return PPLLaVAConfig(**{**fields, **overrides})


def from_llava_next(llava: PathLike, clip: Optional[PathLike] = None, *, clip_model=None, strict: bool = True,
                    dtype: Optional[torch.dtype] = None, **overrides) -> PPLLaVA:
    """Build PPLLaVA from a local LLaVA-NeXT or LLaVA-NeXT-Video checkpoint directory (the layout
    of `llava-v1.6-vicuna-7b-hf`) and, for the alignment, a local Hugging Face CLIP directory (the
    layout of `clip-vit-large-patch14-336`) or an open_clip checkpoint file with its model config
    name in `clip_model` (e.g. "ViT-L-14-336"; open_clip's weights convert exactly). Without
    `clip` the CLIP text tower and projections start untrained. `overrides` set config fields
    (pooling, num_frames, kernels, switches).

    The vision tower, projector, newline and LLM are transformers' own modules, loaded by
    transformers (all its checkpoint conversions apply) and used as they are. A LLaVA-NeXT-Video
    checkpoint's own pooler is replaced by the configured pooling; see `_check_video_pooler`.
    """
    llava = Path(llava)
    hf_config = AutoConfig.from_pretrained(llava)
    if vision_strategy := getattr(hf_config, "vision_feature_select_strategy", "default"):
        if vision_strategy != "default":
            raise ValueError(f"{llava}: vision_feature_select_strategy {vision_strategy!r}; PPLLaVA drops CLS ('default')")
    _check_video_pooler(hf_config, llava, overrides.get("pooling", PPLLaVAConfig.pooling))
    from transformers import AutoModelForImageTextToText

    loaded, info = AutoModelForImageTextToText.from_pretrained(llava, output_loading_info=True, dtype=dtype)
    released = _released_clip_tensors(llava)
    info = _as_report(info, drop=lambda kind, key: kind == "unexpected_keys" and _is_released_clip_key(key))
    _check_report(info, str(llava), strict)
    hf = loaded.config
    llm = _causal_lm(loaded, hf.text_config)
    parts = dict(vision_tower=loaded.model.vision_tower, projector=loaded.model.multi_modal_projector,
                 image_newline=loaded.model.image_newline, language_model=llm)
    clip_text_config = None
    if released:  # a released PPLLaVA checkpoint: its CLIP side travels inside the projector
        if clip is not None and Path(clip).is_file():
            raise ValueError(f"{llava} holds its own CLIP weights; pass a Hugging Face CLIP directory (for its config) or none")
        given = CLIPModel.config_class.from_pretrained(Path(clip)).text_config if clip is not None else None
        clip_text_config, clip_parts, clip_report = _released_clip_parts(released, given)
        _check_report(clip_report, f"{llava} (CLIP side)", strict)
        parts.update(clip_parts)
    elif clip is not None and Path(clip).is_file():  # an open_clip checkpoint file
        if clip_model is None:
            raise ValueError(f"{clip} is an open_clip file: name its model config with clip_model (e.g. 'ViT-L-14-336')")
        clip_text_config, clip_parts, clip_report = convert_text_tower(read_state_dict(clip), clip_model)
        _check_report(clip_report, str(clip), strict)
        parts.update(clip_parts)
    elif clip is not None:
        hf_clip, clip_info = CLIPModel.from_pretrained(Path(clip), output_loading_info=True, dtype=dtype)
        _check_report(_as_report(clip_info), str(clip), strict)
        parts.update(clip_text=hf_clip.text_model, text_projection=hf_clip.text_projection,
                     visual_layernorm=hf_clip.vision_model.post_layernorm,
                     visual_projection=hf_clip.visual_projection, logit_scale=hf_clip.logit_scale)
        clip_text_config = hf_clip.config.text_config
        clip_text_config.projection_dim = hf_clip.config.projection_dim  # CLIPModel keeps the true one on top
    if clip_text_config is not None:
        _clip_overrides(overrides, clip_text_config, set_context=not released)
    config = _config_from_towers(hf.vision_config, hf.text_config, hf, overrides)
    vision = hf.vision_config if isinstance(hf.vision_config, CLIPVisionConfig) else CLIPVisionConfig(**hf.vision_config.to_dict())
    model = PPLLaVA(config, vision_config_=vision, clip_text_config_=clip_text_config, llm_config_=hf.text_config,
                    parts=parts)
    model.load_report = info
    return model.to(dtype) if dtype is not None else model


def _check_video_pooler(hf_config, llava: Path, pooling: str) -> None:
    """Refuse, by name, a LLaVA-NeXT-Video pooler the kit would not reproduce.

    Pooling "spatial" is transformers' `LlavaNextVideoPooler` exactly for its released setting,
    spatial_pool_mode "average" with spatial_pool_stride 2 (avg_pool2d, floor mode); other
    settings would load and then compute something else, so they are refused. The other modes
    replace the pooler by design, except over a "conv" pooler, whose learned weights would be
    dropped."""
    if getattr(hf_config, "model_type", None) != "llava_next_video":
        return
    mode, stride = hf_config.spatial_pool_mode, hf_config.spatial_pool_stride
    if mode == "conv":
        raise ValueError(f"{llava}: spatial_pool_mode 'conv' is a learned pooler whose weights PPLLaVA would drop; "
                         "supported: 'average' (and 'max' with a pooling mode other than 'spatial')")
    if pooling == "spatial" and (mode, stride) != ("average", 2):
        raise ValueError(f"{llava}: spatial_pool_mode {mode!r}, spatial_pool_stride {stride}: pooling 'spatial' "
                         "reproduces LLaVA-NeXT-Video's pooler only for spatial_pool_mode 'average' with "
                         "spatial_pool_stride 2; choose another pooling mode, which replaces the pooler")


RELEASED_CLIP = "multi_modal_projector."  # where the released PPLLaVA checkpoints keep their CLIP side
RELEASED_CLIP_NAMES = ("clip_text_model.", "clip_text_projection.", "clip_visual_projection.", "clip_visual_ln.",
                       "logit_scale")


def _is_released_clip_key(key: str) -> bool:
    """True for the released CLIP side's keys, with or without transformers' "model." prefix."""
    head, sep, name = key.partition(RELEASED_CLIP)
    return bool(sep) and head in ("", "model.") and name.startswith(RELEASED_CLIP_NAMES)


def _released_clip_tensors(directory: Path) -> Dict[str, torch.Tensor]:
    """The CLIP side stored inside a released PPLLaVA checkpoint's projector (its
    `LLaVACLIP3DMultiModalProjector`: clip_text_model, clip_text_projection, clip_visual_projection,
    clip_visual_ln, logit_scale), keyed without the projector prefix; empty for plain LLaVA-NeXT."""
    from safetensors import safe_open

    out = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                name = key[len(RELEASED_CLIP):] if key.startswith(RELEASED_CLIP) else None
                if name is not None and name.startswith(RELEASED_CLIP_NAMES):
                    out[name] = f.get_tensor(key)
    return out


def _released_clip_parts(tensors: Dict[str, torch.Tensor], clip_text_config: Optional[CLIPTextConfig]):
    """Parts for `PPLLaVA(parts=...)` from a released checkpoint's CLIP tensors. Without a CLIP config
    the text tower's shape is read off the weights, with CLIP's 64-wide attention heads."""
    import torch.nn as nn
    from transformers import CLIPTextModel

    text = {k[len("clip_text_model."):]: v for k, v in tensors.items() if k.startswith("clip_text_model.")}
    vocab, width = text["embeddings.token_embedding.weight"].shape
    layers = len({k.split(".")[2] for k in text if k.startswith("encoder.layers.")})
    embed_dim = tensors["clip_text_projection.weight"].shape[0]
    config = clip_text_config or CLIPTextConfig(
        vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, num_attention_heads=max(1, width // 64),
        intermediate_size=text["encoder.layers.0.mlp.fc1.weight"].shape[0], projection_dim=embed_dim,
        max_position_embeddings=text["embeddings.position_embedding.weight"].shape[0],
        bos_token_id=49406, eos_token_id=49407, pad_token_id=0)
    config.max_position_embeddings = text["embeddings.position_embedding.weight"].shape[0]
    config.projection_dim = embed_dim
    clip_text = CLIPTextModel(config)
    result = clip_text.load_state_dict(text, strict=False)
    vision_width = tensors["clip_visual_projection.weight"].shape[1]
    visual_projection = nn.Linear(vision_width, embed_dim, bias=False)
    visual_projection.weight.data.copy_(tensors["clip_visual_projection.weight"])
    text_projection = nn.Linear(width, embed_dim, bias=False)
    text_projection.weight.data.copy_(tensors["clip_text_projection.weight"])
    layernorm = nn.LayerNorm(vision_width)
    layernorm.load_state_dict({"weight": tensors["clip_visual_ln.weight"], "bias": tensors["clip_visual_ln.bias"]})
    parts = dict(clip_text=clip_text, text_projection=text_projection, visual_projection=visual_projection,
                 visual_layernorm=layernorm, logit_scale=nn.Parameter(tensors["logit_scale"].clone().reshape(())))
    report = {"missing_keys": [f"clip_text_model.{k}" for k in result.missing_keys],
              "unexpected_keys": [f"clip_text_model.{k}" for k in result.unexpected_keys]}
    return config, parts, report


def _causal_lm(loaded, text_config):
    """transformers' causal-LM class for the LLaVA's language model, adopting its modules."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(text_config)
    lm.model = loaded.model.language_model
    lm.lm_head = loaded.lm_head
    return lm
