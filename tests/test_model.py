"""The model's behaviour on the tiny preset: media, pooling, bad input, generation, checkpoints."""
import math

import open_clip
import pytest
import torch

from ppllava.config import PPLLaVAConfig
from ppllava.model import PPLLaVA, load_pretrained, save_pretrained
from ppllava.ops import tokenize_clip_prompts

TOKENIZER = open_clip.get_tokenizer("ViT-B-32")


def tiny(**overrides):
    torch.manual_seed(0)
    return PPLLaVA(PPLLaVAConfig.from_name("tiny", **overrides)).eval()


def clip_ids(*prompts, length=248):
    return tokenize_clip_prompts(list(prompts), TOKENIZER, length)


def video(n=1, frames=8, seed=0):
    return torch.randn(n, frames, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def with_media(token, count, prefix=(1, 10, 11), suffix=(12, 13, 14)):
    return [*prefix, *([token] * count), *suffix]


def test_video_forward_loss_and_gradients():
    model = tiny().train()
    cfg = model.config
    n = model.video_token_count(8)
    assert n == 4 * 2 * 2  # (8, 4, 4) patches, kernel (2, 2, 2)
    ids = torch.tensor([with_media(cfg.video_token_id, n)] * 2)
    out = model(ids, labels=ids, pixel_values_videos=video(2), clip_input_ids=clip_ids("the red star", "a blue square"))
    assert out.logits.shape == (2, ids.shape[1], cfg.llm_vocab_size) and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.projector.linear_1.weight.grad.abs().sum() > 0
    assert model.vision_tower.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.clip_text.parameters())  # frozen by default (clip_text_trainable)


def test_visual_positions_never_count_in_the_loss():
    model = tiny()
    n = model.video_token_count(8)
    ids = torch.tensor([with_media(model.config.video_token_id, n)])
    labels = ids.clone()
    kw = dict(pixel_values_videos=video(), clip_input_ids=clip_ids("the red star"))
    masked = labels.masked_fill(ids == model.config.video_token_id, -100)
    with torch.no_grad():
        assert torch.equal(model(ids, labels=labels, **kw).loss, model(ids, labels=masked, **kw).loss)


def test_mixed_batch_matches_each_sample_alone():
    """Sample 0: two single-crop images (a multi-image set) and a video; sample 1: one
    any-resolution image. Batched logits equal each sample run alone (media assigned by position,
    each pooled by its own sample's prompt)."""
    model = tiny()
    cfg = model.config
    a, b = model.image_token_count((64, 64), 1), model.image_token_count((50, 120))
    v = model.video_token_count(8)
    row0 = with_media(cfg.image_token_id, a) + with_media(cfg.image_token_id, a, (15,), ()) + with_media(cfg.video_token_id, v, (16,))
    row1 = with_media(cfg.image_token_id, b)
    length = max(len(row0), len(row1))
    ids = torch.tensor([row0 + [0] * (length - len(row0)), row1 + [0] * (length - len(row1))])
    mask = (torch.arange(length)[None] < torch.tensor([[len(row0)], [len(row1)]])).long()
    g = torch.Generator().manual_seed(3)
    crops_b = model.image_crops((50, 120))
    pixels = torch.randn(3, crops_b, 3, 64, 64, generator=g)
    sizes, crops = [(64, 64), (64, 64), (50, 120)], [1, 1, crops_b]
    prompts = clip_ids("where is the red star", "what colour is the square")
    vid = video()
    with torch.no_grad():
        both = model(ids, mask, pixel_values=pixels, image_sizes=sizes, image_crops=crops, pixel_values_videos=vid,
                     clip_input_ids=prompts).logits
        first = model(ids[:1, : len(row0)], pixel_values=pixels[:2], image_sizes=sizes[:2], image_crops=crops[:2],
                      pixel_values_videos=vid, clip_input_ids=prompts[:1]).logits
        second = model(ids[1:, : len(row1)], pixel_values=pixels[2:], image_sizes=sizes[2:], image_crops=crops[2:],
                       clip_input_ids=prompts[1:]).logits
    torch.testing.assert_close(both[0, : len(row0)], first[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(both[1, : len(row1)], second[0], rtol=1e-4, atol=1e-4)


def test_uniform_relevance_gives_the_adaptive_result_and_a_peaked_one_picks_its_token():
    prompt_model = tiny(pooling="prompt", video_output_size=(2, 2, 2))
    adaptive = tiny(pooling="adaptive", video_output_size=(2, 2, 2))
    clip = video()
    flat = torch.full((1, 8, 4, 4), 1 / 128)
    with torch.no_grad():
        torch.testing.assert_close(prompt_model.video_tokens(clip, relevance=flat), adaptive.video_tokens(clip))
        peaked = torch.zeros(1, 8, 4, 4)
        peaked[0, 5, 1, 2] = 1.0  # one object patch in the window (frames 4-7, rows 0-1, cols 2-3)
        pooled = prompt_model.video_tokens(clip, relevance=peaked)[0]  # (8, D), windows row-major
        patches = prompt_model._patch_features(clip[0])  # (8, 16, Dv)
        target = prompt_model.projector(patches[5, 1 * 4 + 2])
        mean = adaptive.video_tokens(clip)[0, 5]
    window = 1 * 4 + 0 * 2 + 1  # (t'=1, h'=0, w'=1)
    assert (pooled[window] - target).norm() < 1e-3 * (mean - target).norm()


def test_relevance_maps_are_per_frame_and_sum_to_one():
    model = tiny()
    r, s = model.relevance_maps(video(2), clip_ids("the red star", "a blue square"))
    assert r.shape == s.shape == (2, 8, 4, 4) and r.dtype == torch.float32
    torch.testing.assert_close(s.flatten(1).sum(-1), torch.ones(2))


def test_bad_inputs_fail_loudly():
    model = tiny()
    cfg = model.config
    n = model.video_token_count(8)
    ids = torch.tensor([with_media(cfg.video_token_id, n)])
    prompt = clip_ids("the red star")
    with pytest.raises(ValueError, match="1 frames cannot be pooled.*axis T"):
        model(torch.tensor([with_media(cfg.video_token_id, 4)]), pixel_values_videos=video(frames=1), clip_input_ids=prompt)
    with pytest.raises(ValueError, match="sample\\(s\\) \\[0\\] is empty"):
        model(ids, pixel_values_videos=video(), clip_input_ids=clip_ids(""))
    with pytest.raises(ValueError, match="300 positions but the CLIP text context holds 248"):
        model(ids, pixel_values_videos=video(), clip_input_ids=torch.ones(1, 300, dtype=torch.long))
    with pytest.raises(ValueError, match=f"tokens: {n - 1}, features: {n}"):
        model(torch.tensor([with_media(cfg.video_token_id, n - 1)]), pixel_values_videos=video(), clip_input_ids=prompt)
    bad = video()
    bad[0, 3, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(ids, pixel_values_videos=bad, clip_input_ids=prompt)
    with pytest.raises(ValueError, match="no pixel_values_videos"):
        model(ids)
    with pytest.raises(ValueError, match="needs clip_input_ids"):
        model(ids, pixel_values_videos=video())


def test_batched_generation_with_left_padding_matches_one_by_one():
    model = tiny()
    cfg = model.config
    n = model.video_token_count(8)
    rows = [with_media(cfg.video_token_id, n, (1, 20, 21, 22)), with_media(cfg.video_token_id, n)]
    length = max(map(len, rows))
    ids = torch.tensor([[cfg.pad_token_id] * (length - len(r)) + r for r in rows])
    mask = (ids != cfg.pad_token_id).long()
    vids, prompts = video(2), clip_ids("the red star", "a blue square")
    batched = model.generate(ids, mask, pixel_values_videos=vids, clip_input_ids=prompts, max_new_tokens=6, do_sample=False)
    for i, row in enumerate(rows):
        alone = model.generate(torch.tensor([row]), pixel_values_videos=vids[i : i + 1], clip_input_ids=prompts[i : i + 1],
                               max_new_tokens=6, do_sample=False)
        assert torch.equal(batched[i], alone[0]), i
    torch.manual_seed(0)
    sampled = model.generate(ids, mask, pixel_values_videos=vids, clip_input_ids=prompts, max_new_tokens=6,
                             do_sample=True, temperature=1.5)
    assert sampled.shape == (2, 6)
    # eos: a token a row produces for the first time after its first step, so that row must stop there
    i, j = next((i, j) for i, row in enumerate(batched.tolist()) for j in range(1, len(row)) if row[j] not in row[:j])
    row = batched[i].tolist()
    stopped = model.generate(ids, mask, pixel_values_videos=vids, clip_input_ids=prompts, max_new_tokens=6,
                             do_sample=False, eos_token_id=row[j])
    assert stopped[i, : j + 1].tolist() == row[: j + 1]  # same tokens up to and including the eos ...
    assert all(t == cfg.pad_token_id for t in stopped[i, j + 1 :].tolist())  # ... then padding


def test_save_and_load_round_trip(tmp_path):
    model = tiny(clip_text_trainable=True)
    save_pretrained(model, tmp_path / "ckpt")
    again = load_pretrained(tmp_path / "ckpt").eval()
    assert again.load_report == {"missing_keys": [], "unexpected_keys": []}
    n = model.video_token_count(8)
    ids = torch.tensor([with_media(model.config.video_token_id, n)])
    kw = dict(pixel_values_videos=video(), clip_input_ids=clip_ids("the red star"))
    with torch.no_grad():
        torch.testing.assert_close(again(ids, **kw).logits, model(ids, **kw).logits)
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="cannot be read.*incomplete"):
        load_pretrained(tmp_path / "ckpt")


def test_qwen2_family_and_gradient_checkpointing():
    model = tiny(llm_family="qwen2").train()
    assert type(model.language_model).__name__ == "Qwen2ForCausalLM"
    n = model.video_token_count(8)
    ids = torch.tensor([with_media(model.config.video_token_id, n)])
    kw = dict(pixel_values_videos=video(), clip_input_ids=clip_ids("the red star"), labels=ids)
    plain = model(ids, **kw).loss
    model.gradient_checkpointing_enable()
    checkpointed = model(ids, **kw).loss
    checkpointed.backward()
    torch.testing.assert_close(checkpointed, plain)


def test_paper_preset_on_the_meta_device():
    with torch.device("meta"):
        model = PPLLaVA(PPLLaVAConfig.from_name("paper"))
    params = sum(p.numel() for p in model.parameters())
    llm = sum(p.numel() for p in model.language_model.parameters())
    assert 6.6e9 < llm < 6.8e9 and 7.0e9 < params < 7.3e9
    assert model.video_token_count(32) == 1024 and model.patch_grid == 24
    assert model.image_token_count((336, 336), 1) == 64 + 1


def test_prompt_encoding_ignores_trailing_padding():
    """encode_prompts trims the 248-position padding; causal attention and EOS pooling make that exact."""
    model = tiny()
    ids = clip_ids("where is the red star", "a square")
    trimmed = model.encode_prompts(ids)
    full = model.text_projection(model.clip_text(input_ids=ids).pooler_output)
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)


def test_prompts_encoded_in_length_groups_equal_one_batch_with_their_gradients():
    """groups > 1 sorts the prompts by length and encodes each group only as long as its longest prompt."""
    model = tiny()
    model.clip_text.requires_grad_(True)  # as the CLIP stage trains it
    words = "so tell me what you saw there and then".split()
    prompts = [" ".join(words[: i % 9]) + f" a red star {i}" for i in range(11)]  # lengths spread, order mixed
    ids = clip_ids(*prompts)
    weights = torch.randn(len(prompts), model.text_projection.out_features, generator=torch.Generator().manual_seed(0))
    outs, grads = [], []
    for groups in (1, 3, 11, 20):  # more groups than prompts: empty groups never form
        model.zero_grad()
        out = model.encode_prompts(ids, groups=groups)
        (out * weights).sum().backward()
        outs.append(out.detach())
        grads.append(model.clip_text.embeddings.token_embedding.weight.grad.clone())
    for out, grad in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(out, outs[0], rtol=1e-5, atol=1e-6)
        assert (grad - grads[0]).abs().max() <= 1e-5 * grads[0].abs().max()  # sums in another order: to rounding
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match="groups"):
            model.encode_prompts(ids, groups=bad)


def test_placeholders_expand_to_the_counts_the_forward_checks():
    model = tiny()
    cfg = model.config
    text = [1, 10, cfg.image_token_id, 11, cfg.video_token_id, 12, cfg.image_token_id]
    ids = model.expand_placeholders(text, image_sizes=[(50, 120), (64, 64)], image_crops=[None, 1], video_frames=[8])
    assert ids.count(cfg.image_token_id) == model.image_token_count((50, 120)) + model.image_token_count((64, 64), 1)
    assert ids.count(cfg.video_token_id) == model.video_token_count(8)
    crops = model.image_crops((50, 120))
    pixels = torch.randn(2, crops, 3, 64, 64)
    with torch.no_grad():
        out = model(torch.tensor([ids]), pixel_values=pixels, image_sizes=[(50, 120), (64, 64)], image_crops=[crops, 1],
                    pixel_values_videos=video(), clip_input_ids=clip_ids("where is the star"))
    assert out.logits.shape[1] == len(ids)
    with pytest.raises(ValueError, match="2 <image> placeholders in the text but 1 images given"):
        model.expand_placeholders(text, image_sizes=[(64, 64)], video_frames=[8])


def test_bf16_and_sdpa():
    model = tiny().to(torch.bfloat16)
    assert model.language_model.config._attn_implementation == "sdpa"
    n = model.video_token_count(8)
    ids = torch.tensor([with_media(model.config.video_token_id, n)])
    with torch.no_grad():
        out = model(ids, labels=ids, pixel_values_videos=video(), clip_input_ids=clip_ids("the red star"))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)


def test_methods_save_and_load(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "m")
    again = PPLLaVA.from_pretrained(tmp_path / "m", pooling="adaptive", video_output_size=(1, 2, 2))
    assert again.config.pooling == "adaptive" and again.video_token_count(8) == 4


def test_describe_counts_the_paper_model_without_weights():
    from ppllava.describe import describe

    info = describe(PPLLaVAConfig.from_name("paper"))
    assert info["visual_tokens"]["video, 32 frames"] == 1024
    assert info["visual_tokens"]["video, 32 frames, no pooling"] == 18432
    assert 6.6e9 < info["parameters"]["language_model"] < 6.8e9
    assert info["parameters"]["total"] == sum(v for k, v in info["parameters"].items() if k != "total")
