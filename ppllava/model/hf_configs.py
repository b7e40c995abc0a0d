"""The Hugging Face configs of the model's towers, derived from a `PPLLaVAConfig`.

Real checkpoints bring their own (read from their config.json); these make the presets."""
from __future__ import annotations

from transformers import CLIPTextConfig, CLIPVisionConfig, LlamaConfig, PretrainedConfig, Qwen2Config

from ppllava.config import PPLLaVAConfig

CLIP_BOS, CLIP_EOS = 49406, 49407  # open_clip / OpenAI BPE start- and end-of-text ids


def vision_config(cfg: PPLLaVAConfig) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=cfg.vision_width, intermediate_size=4 * cfg.vision_width, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        projection_dim=cfg.clip_embed_dim, hidden_act="quick_gelu",
    )


def clip_text_config(cfg: PPLLaVAConfig) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=cfg.clip_vocab_size, hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.clip_context, projection_dim=cfg.clip_embed_dim, hidden_act="quick_gelu",
        bos_token_id=CLIP_BOS, eos_token_id=CLIP_EOS, pad_token_id=0,
    )


def llm_config(cfg: PPLLaVAConfig) -> PretrainedConfig:
    common = dict(
        vocab_size=cfg.llm_vocab_size, hidden_size=cfg.llm_hidden, intermediate_size=cfg.llm_intermediate,
        num_hidden_layers=cfg.llm_layers, num_attention_heads=cfg.llm_heads, num_key_value_heads=cfg.llm_kv_heads,
        max_position_embeddings=cfg.llm_max_positions, rms_norm_eps=cfg.llm_rms_eps, pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, tie_word_embeddings=False,
    )
    return LlamaConfig(**common) if cfg.llm_family == "llama" else Qwen2Config(**common)
