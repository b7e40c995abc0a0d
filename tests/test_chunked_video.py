"""Long videos a chunk of frames at a time (issue #15): the chunked encoder equals the one-shot one
(`PPLLaVA.video_tokens`) in every pooling mode it covers, reads at most a chunk through the tower,
carries gradients, and names what is wrong."""
import pytest
import torch

from ppllava.config import PPLLaVAConfig
from ppllava.model import PPLLaVA
from ppllava.model.chunked_video import TensorFrames, chunked_video_tokens
from ppllava.ops import WEIGHTINGS


def build(**overrides):
    torch.manual_seed(0)
    return PPLLaVA(PPLLaVAConfig.from_name("tiny", **overrides)).eval()


def videos(n, frames, seed=0):
    return torch.randn(n, frames, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def prompts(model, n):
    ids = torch.tensor([[49406, 320 + i, 1125, 49407] for i in range(n)])
    return model.encode_prompts(ids)


def one_shot_and_chunked(model, pixels, chunk, **guide):
    with torch.no_grad():
        whole = model.video_tokens(pixels, **guide)
        parts = chunked_video_tokens(model, TensorFrames(pixels), chunk, **guide)
    return whole, parts


MODES = [
    dict(pooling="prompt", weighting=w) for w in WEIGHTINGS
] + [
    dict(pooling="prompt", video_kernel=(3, 2, 2), video_stride=(2, 2, 2)),  # overlapping temporal windows
    dict(pooling="prompt", video_output_size=(4, 2, 2)),
    dict(pooling="prompt", pool_position="before_projector"),
    dict(pooling="adaptive", video_output_size=(4, 2, 2)),  # 10 frames into 4: windows overlap
    dict(pooling="adaptive", video_output_size=(3, 1, 3)),
    dict(pooling="temporal_mean"),
    dict(pooling="spatial"),
    dict(pooling="none"),
    dict(pooling="adaptive", video_output_size=(4, 2, 2), pool_position="before_projector"),
]


@pytest.mark.parametrize("overrides", MODES, ids=lambda o: "-".join(str(v) for v in o.values()))
@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_chunked_equals_one_shot(overrides, chunk):
    frames = 9 if overrides.get("video_kernel") == (3, 2, 2) else 10  # frames the windows cover (10 into 4: overlaps)
    model = build(num_frames=frames, **overrides)
    pixels = videos(2, frames)
    guide = {"prompt_embeds": prompts(model, 2)} if model.config.pooling == "prompt" else {}
    whole, parts = one_shot_and_chunked(model, pixels, chunk, **guide)
    assert parts.shape == whole.shape == (2, model.video_token_count(frames), 128)
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)


def test_an_oracle_map_skips_the_relevance_pass():
    model = build(num_frames=8, pooling="prompt", weighting="invariant")
    pixels = videos(1, 8)
    oracle = torch.zeros(1, 8, 4, 4)
    oracle[0, 5, 1:3, 2] = 0.5
    whole, parts = one_shot_and_chunked(model, pixels, 3, relevance=oracle)
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)


def test_the_config_switches_video_tokens_to_chunks_and_the_tower_never_sees_more_than_a_chunk():
    model = build(num_frames=16, pooling="prompt", video_output_size=(4, 2, 2))
    pixels, embeds = videos(2, 16), None
    with torch.no_grad():
        embeds = prompts(model, 2)
        whole = model.video_tokens(pixels, embeds)
        model.config = PPLLaVAConfig.from_name("tiny", num_frames=16, pooling="prompt", video_output_size=(4, 2, 2),
                                               video_chunk_frames=5)
        seen = []
        hook = model.vision_tower.embeddings.patch_embedding.register_forward_hook(
            lambda module, args, out: seen.append(args[0].shape[0]))
        chunked = model.video_tokens(pixels, embeds)
        hook.remove()
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    # two passes (relevance, then tokens) of 4 chunks of at most 5 frames, for 2 videos each
    assert seen == [10, 10, 10, 2] * 2


def test_gradients_through_chunks_equal_the_one_shot_ones():
    results = []
    for chunk in (None, 3):
        model = build(num_frames=8, pooling="prompt", weighting="invariant", video_chunk_frames=chunk).train()
        pixels = videos(1, 8)
        tokens = model.video_tokens(pixels, prompts(model, 1))
        (tokens * torch.linspace(-1, 1, tokens.numel()).view_as(tokens)).sum().backward()
        results.append((model.projector.linear_1.weight.grad.clone(), model.visual_projection.weight.grad.clone()))
    for whole, chunked in zip(*results):
        torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-6)


class _WrongFrames(TensorFrames):
    def read(self, start, stop):
        return super().read(start, stop)[:, :, :, :32]


def test_bad_sources_and_settings_are_named():
    model = build(num_frames=8, pooling="adaptive", video_output_size=(4, 2, 2))
    with pytest.raises(ValueError, match=r"_WrongFrames.read\(0, 4\) must give pixels of shape \(1, 4, 3, 64, 64\)"):
        chunked_video_tokens(model, _WrongFrames(videos(1, 8)), 4)
    with pytest.raises(ValueError, match="chunk_frames must be >= 1"):
        chunked_video_tokens(model, TensorFrames(videos(1, 8)), 0)
    with pytest.raises(ValueError, match="video_chunk_frames must be >= 1"):
        PPLLaVAConfig.from_name("tiny", video_chunk_frames=0)
    with pytest.raises(ValueError, match="video_chunk_frames is for the pooling modes .* 'topk' selects"):
        PPLLaVAConfig.from_name("tiny", pooling="topk", video_chunk_frames=4)
    prompt = build(num_frames=8, pooling="prompt")
    with pytest.raises(ValueError, match="pooling 'prompt' needs clip_input_ids"):
        chunked_video_tokens(prompt, TensorFrames(videos(1, 8)), 4)
    with pytest.raises(ValueError, match="a video of 7 frames cannot be pooled"):  # before any compute
        chunked_video_tokens(prompt, TensorFrames(videos(1, 7)), 4, prompt_embeds=prompts(prompt, 1))


def test_a_video_file_streamed_a_chunk_at_a_time_answers_as_its_pixels_do(tmp_path):
    """processor.video_frames decodes a chunk when the model reads it; long_video_tokens + video_embeds
    give the logits and generated tokens of the whole pixel tensor through pixel_values_videos."""
    import numpy as np

    from ppllava import PPLLaVAProcessor
    from ppllava.data.scenes import random_scene, render
    from ppllava.data.tokenizer import build_world_tokenizer
    from ppllava.data.world import write_video

    frames, _ = render(random_scene(np.random.default_rng(3), 64, 24, 2))
    write_video(tmp_path / "clip.mp4", frames, fps=8)
    model = build(num_frames=24, pooling="prompt", weighting="invariant", video_output_size=(4, 2, 2))
    processor = PPLLaVAProcessor(build_world_tokenizer(), model.config)
    text = processor.apply_chat_template([{"from": "human", "value": "<video>\nwhat colour is the star ?"}])
    batch = processor([text], videos=[tmp_path / "clip.mp4"])
    source = processor.video_frames(tmp_path / "clip.mp4")
    assert source.num_frames == 24
    torch.testing.assert_close(source.read(5, 11), batch["pixel_values_videos"][:, 5:11])
    with torch.no_grad():
        tokens = model.long_video_tokens(source, batch["clip_input_ids"], chunk_frames=7)
        whole = model(**batch).logits
        streamed = model(batch["input_ids"], batch["attention_mask"], video_embeds=tokens).logits
        torch.testing.assert_close(streamed, whole, rtol=1e-4, atol=1e-4)
        kept = {k: v for k, v in batch.items() if k not in ("pixel_values_videos", "clip_input_ids")}
        assert torch.equal(model.generate(**kept, video_embeds=tokens, max_new_tokens=4),
                           model.generate(**batch, max_new_tokens=4))
    with pytest.raises(ValueError, match="video_embeds are the videos' visual tokens already made"):
        model(**batch, video_embeds=tokens)
    with pytest.raises(ValueError, match=r"video_embeds must have shape \(n, tokens, 128\)"):
        model(batch["input_ids"], video_embeds=tokens[..., :64])
    with pytest.raises(ValueError, match="video tokens and features do not match"):
        model(batch["input_ids"], video_embeds=tokens[:, :8])
    with pytest.raises(ValueError, match="long_video_tokens needs chunk_frames"):
        model.long_video_tokens(source, batch["clip_input_ids"])


@pytest.mark.slow  # three fresh processes for the peak memory
def test_the_prefill_cost_rows_and_their_bad_inputs():
    from ppllava.long_video_cost import SyntheticFrames, fits, measure_prefill_cost, prefill_fn

    source = SyntheticFrames(1, 40, 64, seed=2)
    torch.testing.assert_close(source.read(8, 12), source.read(0, 40)[:, 8:12])  # a chunk is the same frames whole
    assert fits("none", 16) and not fits("none", 64) and fits("prompt", 2048)
    rows = measure_prefill_cost([8, 64], ["none", "prompt"], chunk_frames=8, ways=("streamed",), repeats=1)
    assert [(r["mode"], r["way"], r["frames"]) for r in rows] == [  # none's 1,024 tokens at 64 frames do not fit
        ("none", "streamed", 8), ("prompt", "streamed", 8), ("prompt", "streamed", 64)]
    assert all(r["ms"] > 0 and r["peak_mib"] >= 0 for r in rows)
    # streamed and one-shot prefill give the same logits
    torch.testing.assert_close(prefill_fn("prompt", 16, 4, "streamed")(), prefill_fn("prompt", 16, 4, "one_shot")(),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="how must be 'streamed' or 'one_shot'"):
        prefill_fn("prompt", 16, 4, "chunked")
