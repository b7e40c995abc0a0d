"""The selection and merging modes in the model (issue #16): topk, random, merge, dominant end to end
on the tiny preset, their budget, what each reads (the relevance, the tower's [CLS] attention and
keys), against the ops applied by hand, and saved and loaded with the config.
(The ops themselves: tests/test_compression.py.)"""
import dataclasses

import numpy as np
import open_clip
import pytest
import torch

from ppllava import PPLLaVAProcessor
from ppllava.config import PPLLaVAConfig
from ppllava.data.tokenizer import build_world_tokenizer
from ppllava.model import PPLLaVA, load_pretrained
from ppllava.model.feature_cache import FrozenFeatureCache
from ppllava.model.token_layout import TokenLayout
from ppllava.ops import COMPRESSION_MODES, dominant_merge, tokenize_clip_prompts, tome_merge, topk_select
from tests.batches import video_and_image_inputs

TOKENIZER = open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def model():
    """One tiny model; each test switches its (parameter-free) mode with `mode_of`."""
    torch.manual_seed(0)
    return PPLLaVA(PPLLaVAConfig.from_name("tiny")).eval()


@pytest.fixture
def mode_of(model):
    """Set the model's config for a test, restored after it."""
    saved = model.config

    def switch(pooling, **fields):
        model.config = dataclasses.replace(saved, pooling=pooling, **fields)
        return model

    yield switch
    model.config = saved
    model.eval()


def clip_ids(n, text="where is the red star"):
    return tokenize_clip_prompts([text] * n, TOKENIZER, 248)


def video(n=2, frames=8, seed=0):
    return torch.randn(n, frames, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def video_ids(model, n=2, frames=8):
    return torch.tensor([[1, 10, *([model.config.video_token_id] * model.video_token_count(frames)), 12]] * n)


def kept_rows(tokens, candidates):
    """The row of `candidates` (L, D) each of `tokens` (N, D) is (to rounding: another batch size may
    round the projector differently)."""
    distance = torch.cdist(tokens, candidates, compute_mode="donot_use_mm_for_euclid_dist")  # (N, L)
    nearest = distance.min(1)
    assert bool((nearest.values < 1e-5 * candidates.norm(dim=-1).max()).all()), "every kept token is an input token"
    return nearest.indices


# --- end to end -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", COMPRESSION_MODES)
def test_each_mode_runs_forward_and_generate_at_the_budget(mode_of, mode):
    """(Both sides of the projector: the tests of each mode against its op below.)"""
    model = mode_of(mode)
    n = model.video_token_count(8)
    assert n == 16  # prompt pooling's (8, 4, 4) / (2, 2, 2): the equal budget by default
    ids, videos, clip = video_ids(model), video(2), clip_ids(2)
    with torch.no_grad():
        tokens = model.video_tokens(videos, model.encode_prompts(clip))
        logits = model(ids, pixel_values_videos=videos, clip_input_ids=clip).logits
        new = model.generate(ids, pixel_values_videos=videos, clip_input_ids=clip, max_new_tokens=3, do_sample=False)
    assert tokens.shape == (2, 16, model.llm_config.hidden_size) and torch.isfinite(tokens).all()
    assert logits.shape == (*ids.shape, model.config.llm_vocab_size) and new.shape == (2, 3)


@pytest.mark.parametrize("mode", COMPRESSION_MODES)
def test_placeholders_are_the_models_token_counts_and_images_keep_prompts_count(model, mode_of, mode):
    """The processor's placeholder expansion, the model's count and what the model places agree; an
    image becomes as many tokens as under prompt pooling (each crop the image kernel's count)."""
    prompt_counts = [TokenLayout(model.config).image_token_count(size, c) for size, c in (((50, 120), None), ((64, 64), 1))]
    model = mode_of(mode, video_token_budget=24)
    processor = PPLLaVAProcessor(build_world_tokenizer(), model.config)
    inputs = video_and_image_inputs(processor)
    ids = inputs["input_ids"]
    assert int((ids[0] == model.config.video_token_id).sum()) == model.video_token_count(8) == 24
    assert int((ids[1] == model.config.image_token_id).sum()) == model.image_token_count((50, 120)) == prompt_counts[0]
    assert model.image_token_count((64, 64), 1) == prompt_counts[1]
    with torch.no_grad():  # the model places every visual token (it checks tokens against features)
        assert model(**inputs).logits.shape[:2] == ids.shape


# --- the budget -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields,match", [
    (dict(video_token_budget=0), r"video_token_budget must be >= 1"),
    (dict(video_token_budget=129), r"num_frames 8 with pooling 'topk': video_token_budget 129 exceeds the 128 visual "
                                   r"tokens of 8 frames \(8 x 4 x 4 patches\)"),
    (dict(num_frames=9), r"num_frames 9 with pooling 'topk': video_token_budget None takes prompt pooling's count, "
                         r"and axis T \(frames\)"),
    (dict(pooling="dominant", contextual_tokens=17), r"contextual_tokens 17 exceeds the budget of 16 tokens for 8 frames"),
    (dict(pooling="dominant", contextual_tokens=-1), r"contextual_tokens must be >= 0"),
    (dict(pooling="dominant", vision_feature_layer=0), r"vision_feature_layer 0 is the patch embeddings"),
    (dict(pooling="fastv", num_frames=9), r"num_frames 9 with pooling 'fastv': video_token_budget None takes prompt "
                                          r"pooling's count"),  # fastv's own checks: tests/test_fastv.py
])
def test_bad_budgets_are_refused_by_the_config(fields, match):
    with pytest.raises(ValueError, match=match):
        PPLLaVAConfig.from_name("tiny", **{"pooling": "topk", **fields})


def test_budgets_and_visionzips_split():
    cfg = PPLLaVAConfig.from_name("tiny", pooling="dominant")
    assert [cfg.contextual_count(b) for b in (16, 64, 128, 192)] == [2, 10, 20, 30]  # 54 + 10 of 64, ...
    assert PPLLaVAConfig.from_name("tiny", pooling="dominant", contextual_tokens=5).contextual_count(16) == 5
    assert PPLLaVAConfig.from_name("tiny", pooling="merge", video_kernel=(4, 2, 2)).video_budget(8) == 8
    assert PPLLaVAConfig.from_name("tiny", pooling="merge", video_output_size=(2, 1, 1)).video_budget(8) == 2
    assert PPLLaVAConfig.from_name("tiny", pooling="random", video_token_budget=7).video_budget(3) == 7  # 3 frames: 48 tokens


@pytest.fixture
def no_compute(model, monkeypatch):
    """The towers may not run: every fault must be named before any compute."""
    def refuse(*args, **kwargs):
        raise AssertionError("the vision tower ran before the fault was named")

    monkeypatch.setattr(model.vision_tower.embeddings, "forward", refuse)
    monkeypatch.setattr(model.language_model, "forward", refuse)
    return model


@pytest.mark.parametrize("entry", ["forward", "video_tokens", "video_token_count"])
def test_a_video_the_budget_does_not_fit_is_refused_before_any_compute(no_compute, mode_of, entry):
    model = mode_of("topk", video_token_budget=40)
    ids = torch.tensor([[1, *([model.config.video_token_id] * 40)]])
    match = r"a video of 2 frames cannot be pooled as configured: video_token_budget 40 exceeds the 32 visual tokens of 2 frames"
    with pytest.raises(ValueError, match=match), torch.no_grad():
        if entry == "forward":
            model(ids, pixel_values_videos=video(1, frames=2), clip_input_ids=clip_ids(1))
        elif entry == "video_tokens":
            model.video_tokens(video(1, frames=2), model.encode_prompts(clip_ids(1)))
        else:
            model.video_token_count(2)


def test_uncovered_frames_under_the_default_budget_and_no_grid_are_named(no_compute, mode_of):
    model = mode_of("merge")
    with pytest.raises(ValueError, match=r"a video of 9 frames cannot be pooled as configured: .*axis T \(frames\)"):
        model(torch.tensor([[1, *([model.config.video_token_id] * 16)]]), pixel_values_videos=video(1, frames=9))
    with pytest.raises(ValueError, match=r"pooling 'merge' selects or merges tokens and lays them out on no"):
        model.video_geometry(8)


def test_what_a_mode_does_not_read_is_refused(no_compute, mode_of):
    model = mode_of("random")
    with pytest.raises(ValueError, match=r"video_relevance weights pooling 'prompt' and ranks 'topk' only; .* 'random'"):
        model(video_ids(model, 1), pixel_values_videos=video(1), video_relevance=torch.rand(1, 8, 4, 4))
    with pytest.raises(ValueError, match=r"a relevance map weights pooling 'prompt' and ranks 'topk' only"):
        model.video_tokens(video(1), relevance=torch.rand(1, 8, 4, 4))
    model = mode_of("topk")
    with pytest.raises(ValueError, match=r"pooling 'topk' needs clip_input_ids"):
        model(video_ids(model, 1), pixel_values_videos=video(1))
    model = mode_of("dominant")
    features = torch.zeros(1, 128, model.vision_config.hidden_size)
    with pytest.raises(ValueError, match=r"pooling 'dominant' reads the vision tower's \[CLS\] attention and keys"):
        model(video_ids(model, 1), pixel_values_videos=video(1), video_features=features)


# --- each mode against its op, applied by hand ---------------------------------------------------------
@pytest.mark.parametrize("position", ["after_projector", "before_projector"])
def test_topk_by_an_oracle_map_is_topk_select_on_the_features(mode_of, position):
    model = mode_of("topk", pool_position=position)
    videos = video(2)
    oracle = torch.rand(2, 8, 4, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = model.video_tokens(videos, relevance=oracle)
        through_forward = model.embed_inputs(video_ids(model), pixel_values_videos=videos, video_relevance=oracle)
        patches = model.video_features(videos)
        if position == "after_projector":
            want = topk_select(model.projector(patches), oracle, 16).tokens
        else:
            want = model.projector(topk_select(patches, oracle, 16).tokens)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(through_forward[:, 2:18], want, rtol=0, atol=0)


def test_topk_ranks_by_the_same_relevance_prompt_pools_by(mode_of):
    videos, clip = video(2), clip_ids(2)
    model = mode_of("topk")
    with torch.no_grad():
        _, s = model.relevance_maps(videos, clip)
        got = model(video_ids(model), pixel_values_videos=videos, clip_input_ids=clip).logits
        want = model(video_ids(model), pixel_values_videos=videos, video_relevance=s).logits
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("position", ["after_projector", "before_projector"])
def test_merge_is_tome_merge_by_the_tower_features_on_either_side_of_the_projector(mode_of, position):
    model = mode_of("merge", pool_position=position)
    videos = video(2)
    with torch.no_grad():
        got = model.video_tokens(videos)
        patches = model.video_features(videos)
        if position == "after_projector":
            want = tome_merge(model.projector(patches), (8, 4, 4), 16, keys=patches).tokens
        else:  # the same groups (the metric is the features either way), averaged before projecting
            want = model.projector(tome_merge(patches, (8, 4, 4), 16).tokens)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def eager_tower_outputs(model, pixels):
    """The tower's own attention weights and hidden states, by transformers' eager attention."""
    tower = model.vision_tower
    saved = tower.config._attn_implementation
    tower.config._attn_implementation = "eager"
    keys = []
    depth = model.config.vision_feature_layer % (len(tower.encoder.layers) + 1)
    hook = tower.encoder.layers[depth - 1].self_attn.k_proj.register_forward_hook(lambda m, i, o: keys.append(o))
    try:
        with torch.no_grad():
            out = tower(pixels, output_attentions=True, output_hidden_states=True)
    finally:
        hook.remove()
        tower.config._attn_implementation = saved
    return out, keys[0], depth


@pytest.mark.parametrize("feature_layer", [-2, -1, 1])
def test_dominants_cls_attention_and_keys_are_the_towers_own(model, mode_of, feature_layer):
    """At LLaVA's -2 the penultimate layer, VisionZip's `attentions[-2]`; the [CLS] row, mean over heads."""
    model = mode_of("dominant", vision_feature_layer=feature_layer)
    pixels = video(1, frames=3)[0]
    with torch.no_grad():
        features, cls_attention, keys = model._patch_features(pixels, attention=True)
    out, k_proj, depth = eager_tower_outputs(model, pixels)
    if feature_layer == -2:
        assert depth == 2 and out.attentions[depth - 1] is out.attentions[-2]
    heads = model.vision_config.num_attention_heads
    torch.testing.assert_close(cls_attention, out.attentions[depth - 1][:, :, 0, 1:].mean(1))
    torch.testing.assert_close(features, out.hidden_states[depth][:, 1:])  # eager vs the tower's sdpa: rounding
    torch.testing.assert_close(keys, k_proj.view(3, 17, heads, -1).mean(2)[:, 1:])
    assert cls_attention.dtype == torch.float32 and keys.shape == (3, 16, model.vision_config.hidden_size // heads)


@pytest.mark.parametrize("position", ["after_projector", "before_projector"])
def test_dominant_is_dominant_merge_by_the_towers_attention_on_either_side_of_the_projector(mode_of, position):
    model = mode_of("dominant", contextual_tokens=5, pool_position=position)
    videos = video(2)
    with torch.no_grad():
        got = model.video_tokens(videos)
        features, cls_attention, keys = model._patch_features(videos.flatten(0, 1), attention=True)
        features, cls_attention, keys = features.reshape(2, 128, -1), cls_attention.reshape(2, 128), keys.reshape(2, 128, -1)
        if position == "after_projector":
            want = dominant_merge(model.projector(features), cls_attention, 16, 5, keys=keys).tokens
        else:
            want = model.projector(dominant_merge(features, cls_attention, 16, 5, keys=keys).tokens)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_dominant_reads_its_attention_through_the_feature_cache(mode_of):
    """The cache keeps the [CLS] attention and keys beside the features, under a key of their own, so the
    same frames under another mode read plain features."""
    model = mode_of("dominant")
    trainable = [p for p in model.vision_tower.parameters() if p.requires_grad]
    model.vision_tower.requires_grad_(False)  # the cache serves a frozen tower only
    videos, clip = video(1), clip_ids(1)
    try:
        with torch.no_grad():
            plain = model.video_tokens(videos)
            model.feature_cache = FrozenFeatureCache(max_mb=16)
            first, again = model.video_tokens(videos), model.video_tokens(videos)
            assert (model.feature_cache.misses, model.feature_cache.hits) == (8, 8)
            prompt = mode_of("prompt").video_tokens(videos, model.encode_prompts(clip))
            assert model.feature_cache.misses == 16  # another kind of row: computed, not read
            model.feature_cache = None
            prompt_plain = model.video_tokens(videos, model.encode_prompts(clip))
    finally:
        model.feature_cache = None
        for p in trainable:
            p.requires_grad_(True)
    assert torch.equal(first, plain) and torch.equal(again, plain) and torch.equal(prompt, prompt_plain)


# --- random: reproducible in eval, fresh in training --------------------------------------------------------
def test_random_in_eval_keeps_a_videos_tokens_in_any_call_and_batch(mode_of):
    model = mode_of("random")
    videos = video(2)
    with torch.no_grad():
        before = mode_of("random", pool_position="before_projector").video_tokens(videos)
        model = mode_of("random")
        candidates = model.projector(model.video_features(videos))
        first = model.video_tokens(videos)
        again = model.video_tokens(videos)
        swapped = model.video_tokens(videos.flip(0))
        alone = model.video_tokens(videos[1:])
        placed = model.embed_inputs(video_ids(model), pixel_values_videos=videos)[:, 2:18]
        reseeded = mode_of("random", random_seed=1).video_tokens(videos)
    assert torch.equal(first, again) and torch.equal(first, placed)
    torch.testing.assert_close(before, first)  # selection commutes with the projector: the same tokens
    kept = [kept_rows(first[i], candidates[i]) for i in range(2)]
    assert torch.equal(kept[0], kept_rows(swapped[1], candidates[0])) and torch.equal(kept[1], kept_rows(swapped[0], candidates[1]))
    assert torch.equal(kept[1], kept_rows(alone[0], candidates[1]))
    assert all(bool((k.diff() > 0).all()) for k in kept)  # in time (input) order
    assert not torch.equal(kept[0], kept[1])  # each video draws its own
    assert not torch.equal(kept[0], kept_rows(reseeded[0], candidates[0]))


def test_random_in_training_draws_afresh_from_torchs_seed(mode_of):
    model = mode_of("random").train()
    videos = video(1)
    with torch.no_grad():
        candidates = model.projector(model.video_features(videos))[0]
        torch.manual_seed(3)
        a, b = model.video_tokens(videos)[0], model.video_tokens(videos)[0]
        torch.manual_seed(3)
        a_again = model.video_tokens(videos)[0]
    assert not torch.equal(kept_rows(a, candidates), kept_rows(b, candidates))
    assert torch.equal(a, a_again)


# --- the chat ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["topk", "dominant"])
def test_the_chat_answers_in_the_modes_that_read_a_prompt_or_the_towers_attention(mode_of, tmp_path, monkeypatch, mode):
    """topk is pooled by the chat's own relevance of the question; dominant, whose inputs the chat's
    features do not hold, sends the pixels alone."""
    from ppllava.chat import VideoChat
    from ppllava.data.scenes import random_scene, render
    from ppllava.data.world import write_video

    frames, _ = render(random_scene(np.random.default_rng(3), 64, 8, 2))
    write_video(tmp_path / "clip.mp4", frames, fps=8)
    model = mode_of(mode)
    chat = VideoChat(model, tmp_path / "clip.mp4", max_new_tokens=2)
    sent = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **kw: sent.append(kw) or generate(*a, **kw))
    turn = chat.ask("what colour is the star ?")
    assert turn.visual_tokens == 16 and isinstance(turn.answer, str)
    assert ("video_features" in sent[0]) == (mode == "topk") and ("video_relevance" in sent[0]) == (mode == "topk")
    if mode == "topk":
        assert torch.equal(sent[0]["video_relevance"][0].cpu(), turn.relevance)


# --- checkpoints ------------------------------------------------------------------------------------------------
def test_the_new_fields_save_and_load_and_old_configs_still_load(tmp_path):
    torch.manual_seed(0)
    config = PPLLaVAConfig.from_name("tiny", pooling="dominant", video_token_budget=20, contextual_tokens=4,
                                     random_seed=7)
    model = PPLLaVA(config).eval()
    model.save_pretrained(tmp_path / "zoo")
    loaded = PPLLaVA.from_pretrained(tmp_path / "zoo").eval()
    assert loaded.config == config and loaded.video_token_count(8) == 20
    assert PPLLaVAConfig.from_yaml(config.to_yaml()) == config
    with torch.no_grad():
        torch.testing.assert_close(loaded.video_tokens(video(1)), model.video_tokens(video(1)), rtol=0, atol=0)
    text = (tmp_path / "zoo" / "config.yaml").read_text()
    old = "\n".join(line for line in text.splitlines()
                    if not line.startswith(("video_token_budget", "contextual_tokens", "random_seed")))
    (tmp_path / "zoo" / "config.yaml").write_text(old.replace("pooling: dominant", "pooling: prompt"))
    before = load_pretrained(tmp_path / "zoo")  # a checkpoint written before the fields existed
    assert (before.config.video_token_budget, before.config.contextual_tokens, before.config.random_seed) == (None, None, 0)
    assert load_pretrained(tmp_path / "zoo", pooling="topk").video_token_count(8) == 16
