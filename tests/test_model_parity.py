"""The model against transformers' LLaVA-NeXT on tiny checkpoints in the real formats."""
import pytest
import torch
from transformers import LlavaNextForConditionalGeneration, LlavaNextVideoForConditionalGeneration

from ppllava.model import from_llava_next
from ppllava.model.tiny_checkpoints import IMAGE_TOKEN, VIDEO_TOKEN, clip_dir, llava_next_dir, llava_next_video_dir


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return dict(llava=llava_next_dir(root / "llava"), video=llava_next_video_dir(root / "video"), clip=clip_dir(root / "clip"))


def prompt_with(tokens, count, before=(1, 5, 6), after=(7, 8, 9)):
    return torch.tensor([[*before, *([tokens] * count), *after]])


@pytest.mark.parametrize("image_size", [(64, 64), (50, 120), (128, 70)])
def test_image_logits_equal_llava_next_with_no_pooling(checkpoints, image_size):
    ours = from_llava_next(checkpoints["llava"], checkpoints["clip"], pooling="none").eval()
    ref = LlavaNextForConditionalGeneration.from_pretrained(checkpoints["llava"]).eval()
    crops = ours.image_crops(image_size)
    pixels = torch.randn(1, crops, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ids = prompt_with(IMAGE_TOKEN, ours.image_token_count(image_size))
    sizes = torch.tensor([image_size])
    with torch.no_grad():
        expected = ref(input_ids=ids, pixel_values=pixels, image_sizes=sizes).logits
        got = ours(ids, pixel_values=pixels, image_sizes=sizes).logits
    torch.testing.assert_close(got, expected)


def test_video_logits_equal_llava_next_video_with_spatial_pooling_before_the_projector(checkpoints):
    ours = from_llava_next(checkpoints["video"], checkpoints["clip"], pooling="spatial",
                           pool_position="before_projector", num_frames=4).eval()
    ref = LlavaNextVideoForConditionalGeneration.from_pretrained(checkpoints["video"]).eval()
    video = torch.randn(1, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ids = prompt_with(VIDEO_TOKEN, ours.video_token_count(4))
    assert ours.video_token_count(4) == 4 * 2 * 2
    with torch.no_grad():
        expected = ref(input_ids=ids, pixel_values_videos=video).logits
        got = ours(ids, pixel_values_videos=video).logits
    torch.testing.assert_close(got, expected)


def test_loading_reports_and_refuses_unexpected_keys(checkpoints, tmp_path):
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["llava"], broken)
    state = load_file(broken / "model.safetensors")
    state["multi_modal_projector.linear_3.weight"] = torch.zeros(2, 2)
    del state["image_newline"]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing_keys.*image_newline|unexpected_keys.*linear_3"):
        from_llava_next(broken, pooling="none")
    with pytest.warns(UserWarning, match="linear_3"):
        model = from_llava_next(broken, pooling="none", strict=False)
    assert any("linear_3" in k for k in model.load_report["unexpected_keys"])


def test_clip_weights_are_the_checkpoints(checkpoints):
    from transformers import CLIPModel

    ours = from_llava_next(checkpoints["llava"], checkpoints["clip"], pooling="prompt")
    clip = CLIPModel.from_pretrained(checkpoints["clip"])
    torch.testing.assert_close(ours.text_projection.weight, clip.text_projection.weight)
    torch.testing.assert_close(ours.visual_layernorm.weight, clip.vision_model.post_layernorm.weight)
    assert ours.clip_text.embeddings.position_embedding.weight.shape[0] == 248
    torch.testing.assert_close(ours.clip_text.embeddings.position_embedding.weight[:20],
                               clip.text_model.embeddings.position_embedding.weight[:20])


@pytest.mark.parametrize("quick_gelu,custom_text", [(True, False), (False, True)])
def test_open_clip_file_converts_to_the_same_text_embeddings(checkpoints, tmp_path, quick_gelu, custom_text):
    """An open_clip checkpoint file as the CLIP side: our prompt embeddings equal open_clip's own
    encode_text on the same weights (CLIP and CustomTextCLIP layouts, both activations)."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    from ppllava.ops import tokenize_clip_prompts

    torch.manual_seed(4)
    config = {"embed_dim": 16, "quick_gelu": quick_gelu,
              "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    cls = CustomTextCLIP if custom_text else CLIP
    reference = cls(embed_dim=16, vision_cfg=CLIPVisionCfg(**config["vision_cfg"]),
                    text_cfg=CLIPTextCfg(**config["text_cfg"]), quick_gelu=quick_gelu).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a wrong mapping cannot pass
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "open_clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    ours = from_llava_next(checkpoints["llava"], path, clip_model=config, pooling="prompt", extend_clip_context=False).eval()
    ids = tokenize_clip_prompts(["what colour is the star", "where does the square move"],
                                open_clip.get_tokenizer("ViT-B-32"), 77)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_prompts(ids), reference.encode_text(ids), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.logit_scale, reference.logit_scale)
        torch.testing.assert_close(ours.visual_projection.weight, reference.visual.proj.T)
        torch.testing.assert_close(ours.visual_layernorm.weight, reference.visual.ln_post.weight)


def test_released_ppllava_layout_brings_its_own_clip_side(checkpoints, tmp_path):
    from transformers import CLIPModel

    from ppllava.ops import tokenize_clip_prompts
    from ppllava.model.tiny_checkpoints import released_ppllava_dir

    import open_clip

    released = released_ppllava_dir(tmp_path / "released", checkpoints["clip"])
    # The CLIP directory gives the text tower its config (head count); the weights come from the checkpoint.
    ours = from_llava_next(released, checkpoints["clip"], pooling="prompt", extend_clip_context=False).eval()
    clip = CLIPModel.from_pretrained(tmp_path / "released_embedded_clip").eval()  # what the checkpoint holds
    ids = tokenize_clip_prompts(["the red star", "a blue square moves left"], open_clip.get_tokenizer("ViT-B-32"), 77)
    with torch.no_grad():
        expected = clip.text_projection(clip.text_model(input_ids=ids).pooler_output)
        torch.testing.assert_close(ours.encode_prompts(ids), expected)
    torch.testing.assert_close(ours.visual_layernorm.weight, clip.vision_model.post_layernorm.weight)
    # The LLaVA side is untouched by the extra keys.
    plain = from_llava_next(checkpoints["llava"], pooling="none")
    torch.testing.assert_close(ours.projector.linear_1.weight, plain.projector.linear_1.weight)


def test_spatial_pooling_equals_llava_next_video_on_an_odd_patch_grid(tmp_path):
    """80 px frames, 5 x 5 patches: transformers' avg_pool2d (floor mode) drops the last row and
    column; the 'spatial' mode drops the same ones (its explicit remainder='drop')."""
    checkpoint = llava_next_video_dir(tmp_path / "odd", image_size=80)
    ours = from_llava_next(checkpoint, pooling="spatial", pool_position="before_projector", num_frames=2).eval()
    ref = LlavaNextVideoForConditionalGeneration.from_pretrained(checkpoint).eval()
    video = torch.randn(1, 2, 3, 80, 80, generator=torch.Generator().manual_seed(2))
    assert ours.patch_grid == 5 and ours.video_token_count(2) == 2 * 2 * 2
    ids = prompt_with(VIDEO_TOKEN, ours.video_token_count(2))
    with torch.no_grad():
        expected = ref(input_ids=ids, pixel_values_videos=video).logits
        got = ours(ids, pixel_values_videos=video).logits
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("mode,stride", [("max", 2), ("average", 4), ("max", 3)])
def test_llava_next_video_poolers_spatial_does_not_reproduce_are_refused_by_name(tmp_path, mode, stride):
    checkpoint = llava_next_video_dir(tmp_path / f"video-{mode}-{stride}", spatial_pool_mode=mode,
                                      spatial_pool_stride=stride)
    with pytest.raises(ValueError, match=rf"video-{mode}-{stride}: spatial_pool_mode '{mode}', spatial_pool_stride "
                                         rf"{stride}: pooling 'spatial' .* only for spatial_pool_mode 'average' with "
                                         "spatial_pool_stride 2"):
        from_llava_next(checkpoint, pooling="spatial", num_frames=4)
    # The other modes replace the checkpoint's (weightless) pooler by design: it loads.
    assert from_llava_next(checkpoint, pooling="adaptive", video_output_size=(1, 2, 2), num_frames=4).video_token_count(4) == 4


@pytest.mark.parametrize("pooling", ["spatial", "prompt"])
def test_a_learned_conv_pooler_is_refused_in_every_mode(tmp_path, pooling):
    checkpoint = llava_next_video_dir(tmp_path / "conv", spatial_pool_mode="conv")
    with pytest.raises(ValueError, match=r"conv: spatial_pool_mode 'conv' is a learned pooler whose weights PPLLaVA would drop"):
        from_llava_next(checkpoint, pooling=pooling, num_frames=4)


@pytest.mark.parametrize("layer", [-4, -2, -1, 0, 2, 3])
def test_patch_features_equal_the_towers_hidden_state_bit_for_bit(layer):
    """_tower_features runs only the layers before `vision_feature_layer`; what it returns is exactly
    transformers' hidden_states[layer] of the whole tower, CLS dropped."""
    from ppllava.config import PPLLaVAConfig
    from ppllava.model import PPLLaVA

    torch.manual_seed(0)
    model = PPLLaVA(PPLLaVAConfig.from_name("tiny", vision_feature_layer=layer)).eval()
    pixels = torch.randn(5, 3, model.config.image_size, model.config.image_size)
    with torch.no_grad():
        whole = model.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states
        assert len(whole) == model.config.vision_layers + 1
        assert torch.equal(model._patch_features(pixels), whole[layer][:, 1:])


@pytest.mark.parametrize("layer", [-5, 4])
def test_a_vision_feature_layer_outside_the_tower_is_refused(layer):
    from ppllava.config import PPLLaVAConfig

    with pytest.raises(ValueError, match=r"vision_feature_layer .* 4 hidden states of a 3-layer tower"):
        PPLLaVAConfig.from_name("tiny", vision_feature_layer=layer)
