"""Tiny checkpoints in the real formats, written by the libraries' own save functions."""
from pathlib import Path

import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
)

IMAGE_TOKEN, VIDEO_TOKEN, VOCAB = 100, 101, 128
PINPOINTS = [[64, 64], [64, 128], [128, 64], [128, 128]]


def _towers():
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=64, patch_size=16, projection_dim=16, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                       bos_token_id=1, eos_token_id=2)
    return vision, text


def llava_next_dir(path: Path) -> Path:
    torch.manual_seed(0)
    vision, text = _towers()
    config = LlavaNextConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=IMAGE_TOKEN,
                             image_grid_pinpoints=PINPOINTS)
    LlavaNextForConditionalGeneration(config).save_pretrained(path)
    return path


def llava_next_video_dir(path: Path) -> Path:
    torch.manual_seed(1)
    vision, text = _towers()
    config = LlavaNextVideoConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                                  image_token_index=IMAGE_TOKEN, video_token_index=VIDEO_TOKEN,
                                  image_grid_pinpoints=PINPOINTS, spatial_pool_mode="average", spatial_pool_stride=2)
    LlavaNextVideoForConditionalGeneration(config).save_pretrained(path)
    return path


def clip_dir(path: Path) -> Path:
    torch.manual_seed(2)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(path)
    return path
