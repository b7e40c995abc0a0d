"""Tiny checkpoints in the real formats, written by the libraries' own save functions: what the
real-checkpoint tests and notebook 09 (smoke mode) load, since no real weights can be downloaded here."""
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


def _towers(image_size: int = 64):
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=16, projection_dim=16, hidden_act="quick_gelu")
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


def llava_next_video_dir(path: Path, *, spatial_pool_mode: str = "average", spatial_pool_stride: int = 2,
                         image_size: int = 64) -> Path:
    """The released pooler setting by default; other settings and frame sizes (80 px: an odd 5 x 5
    patch grid) for the tests of what the loader reproduces or refuses."""
    torch.manual_seed(1)
    vision, text = _towers(image_size)
    config = LlavaNextVideoConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                                  image_token_index=IMAGE_TOKEN, video_token_index=VIDEO_TOKEN,
                                  image_grid_pinpoints=PINPOINTS, spatial_pool_mode=spatial_pool_mode,
                                  spatial_pool_stride=spatial_pool_stride)
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


def released_ppllava_dir(path: Path, clip: Path) -> Path:
    """A LLaVA-NeXT checkpoint with the released PPLLaVA's CLIP side inside its projector, in the
    key layout of the released `LLaVACLIP3DMultiModalProjector` (clip_text_model, clip_text_projection,
    clip_visual_projection, clip_visual_ln, logit_scale)."""
    from safetensors.torch import load_file, save_file

    llava_next_dir(path)
    state = load_file(path / "model.safetensors")
    clip_model = CLIPModel.from_pretrained(clip)
    torch.manual_seed(5)
    with torch.no_grad():  # post-pretrained: different from the CLIP directory's weights
        for p in clip_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    clip_model.save_pretrained(path.parent / f"{path.name}_embedded_clip")
    for key, value in clip_model.text_model.state_dict().items():
        state[f"multi_modal_projector.clip_text_model.{key}"] = value
    state["multi_modal_projector.clip_text_projection.weight"] = clip_model.text_projection.weight
    state["multi_modal_projector.clip_visual_projection.weight"] = clip_model.visual_projection.weight
    for name in ("weight", "bias"):
        state[f"multi_modal_projector.clip_visual_ln.{name}"] = getattr(clip_model.vision_model.post_layernorm, name)
    state["multi_modal_projector.logit_scale"] = clip_model.logit_scale
    save_file({k: v.detach().contiguous() for k, v in state.items()}, path / "model.safetensors", metadata={"format": "pt"})
    return path


# The layout of llava-hf's LLaVA-NeXT-Video chat template: content parts, media before the text, roles
# in capitals, "ASSISTANT:" as the generation cue.
VIDEO_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'].upper() + ': ' }}{% endif %}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def tokenizer_dir(path: Path) -> Path:
    """A LLaMA-style tokenizer for the tiny checkpoints' 128 ids, saved into `path` beside the weights
    with `save_pretrained` and the chat template above, as a llava-hf directory holds its own: BPE
    over characters with SentencePiece's "▁" for spaces, <pad> <s> </s> <unk> at 0-3, <image> and
    <video> at IMAGE_TOKEN and VIDEO_TOKEN, 26 merges after them. Characters outside printable ASCII
    are <unk>."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from tokenizers import decoders
    from transformers import PreTrainedTokenizerFast

    specials, media = ["<pad>", "<s>", "</s>", "<unk>"], ["<image>", "<video>"]
    alphabet = ["▁", "\n", *map(chr, range(33, 127))]  # 4 + 96 = IMAGE_TOKEN ids before the media tokens
    metaspace = dict(replacement="▁", prepend_scheme="first")
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(**metaspace)
    trained.train_from_iterator(  # deterministic: the same merges every time
        ["USER: what colour is the star ? ASSISTANT: the red circle moves left and the blue square stays still ."],
        trainers.BpeTrainer(vocab_size=VOCAB - len(media), special_tokens=specials, initial_alphabet=alphabet,
                            limit_alphabet=len(alphabet), show_progress=False))
    bpe = json.loads(trained.to_str())["model"]
    vocab = {t: i if i < IMAGE_TOKEN else i + len(media) for t, i in bpe["vocab"].items()}
    vocab.update({"<image>": IMAGE_TOKEN, "<video>": VIDEO_TOKEN})
    core = Tokenizer(models.BPE(vocab, [tuple(m) for m in bpe["merges"]], unk_token="<unk>"))
    core.pre_tokenizer, core.decoder = pre_tokenizers.Metaspace(**metaspace), decoders.Metaspace(**metaspace)
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])  # LLaMA's BOS
    core.add_special_tokens(specials + media)  # never split: matched before the BPE
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", extra_special_tokens=media)
    tokenizer.chat_template = VIDEO_CHAT_TEMPLATE
    tokenizer.save_pretrained(str(path))
    return path
