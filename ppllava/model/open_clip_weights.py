"""open_clip checkpoints (a state-dict file) as the model's CLIP text tower and projections.

The model's CLIP side is transformers' `CLIPTextModel`; an open_clip text transformer is the same
network with other names (and q, k, v fused), so its weights convert exactly: tests check the
converted tower's embeddings against open_clip's own `encode_text`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple, Union

import torch
import torch.nn as nn
from transformers import CLIPTextConfig, CLIPTextModel

from ppllava.model.hf_configs import CLIP_BOS, CLIP_EOS


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """An open_clip checkpoint file (.safetensors, or a torch file holding a state dict, possibly
    under "state_dict" as open_clip's training saves it), with DDP's "module." prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not an open_clip checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _model_config(model: Union[str, dict]) -> dict:
    if isinstance(model, dict):
        return model
    import open_clip

    config = open_clip.get_model_config(model)
    if config is None:
        raise ValueError(f"open_clip knows no model config {model!r}")
    return config


def convert_text_tower(state: Dict[str, torch.Tensor], model: Union[str, dict], quick_gelu: bool = None
                       ) -> Tuple[CLIPTextConfig, Dict[str, nn.Module], Dict[str, list]]:
    """Build the CLIP text parts from an open_clip state dict.

    Args:
        state: open_clip's `CLIP` or `CustomTextCLIP` state dict.
        model: open_clip's model config name (e.g. "ViT-L-14-336") or its dict
            ({"embed_dim", "text_cfg": {...}, "quick_gelu"}).
        quick_gelu: the activation; defaults to the config's "quick_gelu" (OpenAI's weights use it).

    Returns:
        (text config, parts for `PPLLaVA(parts=...)`: clip_text, text_projection, logit_scale, and the
        visual side's ln_post and projection; a report of missing and unexpected keys).
    """
    config = _model_config(model)
    text = config["text_cfg"]
    width, layers, heads = text["width"], text["layers"], text["heads"]
    quick = config.get("quick_gelu", False) if quick_gelu is None else quick_gelu
    embed_dim = config["embed_dim"]
    prefix = "text." if "text.token_embedding.weight" in state else ""
    hf_config = CLIPTextConfig(
        vocab_size=text.get("vocab_size", 49408), hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=int(width * text.get("mlp_ratio", 4.0)), max_position_embeddings=text.get("context_length", 77),
        projection_dim=embed_dim, hidden_act="quick_gelu" if quick else "gelu", bos_token_id=CLIP_BOS,
        eos_token_id=CLIP_EOS, pad_token_id=0,
    )
    used = set()

    def take(key):
        used.add(prefix + key)
        return state[prefix + key]

    hf = {
        "embeddings.token_embedding.weight": take("token_embedding.weight"),
        "embeddings.position_embedding.weight": take("positional_embedding"),
        "final_layer_norm.weight": take("ln_final.weight"),
        "final_layer_norm.bias": take("ln_final.bias"),
    }
    for i in range(layers):
        old, new = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for name in ("weight", "bias"):
            q, k, v = take(old + f"attn.in_proj_{name}").chunk(3)
            hf.update({new + f"self_attn.q_proj.{name}": q, new + f"self_attn.k_proj.{name}": k,
                       new + f"self_attn.v_proj.{name}": v})
            for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                hf[new + f"{b}.{name}"] = take(old + f"{a}.{name}")
    clip_text = CLIPTextModel(hf_config)
    result = clip_text.load_state_dict(hf, strict=False)
    report = {"missing_keys": list(result.missing_keys), "unexpected_keys": list(result.unexpected_keys)}

    text_projection = nn.Linear(width, embed_dim, bias=False)
    if prefix + "text_projection.weight" in state:  # a Linear in some open_clip text towers
        text_projection.weight.data.copy_(take("text_projection.weight"))
    else:  # a (width, embed_dim) matrix applied as x @ P
        text_projection.weight.data.copy_(take("text_projection").T)
    parts = {"clip_text": clip_text, "text_projection": text_projection,
             "logit_scale": nn.Parameter(state["logit_scale"].clone().reshape(()))}
    if "visual.ln_post.weight" in state:
        layernorm = nn.LayerNorm(state["visual.ln_post.weight"].shape[0])
        layernorm.load_state_dict({"weight": state["visual.ln_post.weight"], "bias": state["visual.ln_post.bias"]})
        parts["visual_layernorm"] = layernorm
    else:
        report["missing_keys"].append("visual.ln_post")
    if "visual.proj" in state:
        visual_projection = nn.Linear(state["visual.proj"].shape[0], embed_dim, bias=False)
        visual_projection.weight.data.copy_(state["visual.proj"].T)
        parts["visual_projection"] = visual_projection
    else:
        report["missing_keys"].append("visual.proj")
    # The vision tower's other weights are not used: the LLaVA checkpoint brings its own tower.
    report["unexpected_keys"] += sorted(k for k in state if k.startswith(prefix) and k not in used
                                        and not k.startswith("visual.") and k not in ("logit_scale", "logit_bias"))
    return hf_config, parts, report
