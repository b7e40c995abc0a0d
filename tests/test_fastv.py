"""pooling "fastv": FastV inside the LLM (issue #16; ppllava/model/fastv.py) on the tiny preset, Llama and
Qwen2. Against `none` at a budget of every token, against a plain reference built from transformers' own
eager forward (its attention maps and hidden states, and its LlamaModel run on the kept tokens), cached
generation against recomputing the pruned forward, the cache's per-layer lengths, batches with padding
against each sample alone, training, and bad configs. (The selection rule itself: tests/test_compression.py.)"""
import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from ppllava import PPLLaVAProcessor
from ppllava.config import PPLLaVAConfig
from ppllava.data.tokenizer import build_world_tokenizer
from ppllava.model import PPLLaVA, fastv
from ppllava.model.token_layout import TokenLayout
from ppllava.ops import fastv_keep, fastv_select, first_inputs
from tests.batches import video_and_image_inputs

TEXT = (1, 10, 11)  # before the video
QUESTION = (12, 13, 14)  # after it: the last prompt token is text


def tiny(**overrides):
    torch.manual_seed(0)
    return PPLLaVA(PPLLaVAConfig.from_name("tiny", **{"pooling": "fastv", **overrides})).eval()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request):
    return tiny(llm_family=request.param)


@pytest.fixture
def mode_of(model):
    """Switch the (parameter-free) pooling fields for a test, restored after it."""
    saved = model.config

    def switch(**fields):
        model.config = dataclasses.replace(saved, **fields)
        return model

    yield switch
    model.config = saved
    model.eval()


def video(n=1, frames=8, seed=0):
    return torch.randn(n, frames, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def row(model, videos=1, prefix=TEXT, suffix=QUESTION):
    v = model.config.video_token_id
    out = list(prefix)
    for i in range(videos):
        out += [v] * model.video_token_count(8) + ([20 + i] if i < videos - 1 else [])
    return out + list(suffix)


def padded(rows, side, pad=0):
    length = max(map(len, rows))
    fill = [[pad] * (length - len(r)) for r in rows]
    ids = torch.tensor([f + r if side == "left" else r + f for r, f in zip(rows, fill)])
    mask = torch.tensor([[0] * len(f) + [1] * len(r) if side == "left" else [1] * len(r) + [0] * len(f)
                         for r, f in zip(rows, fill)])
    return ids, mask


# --- sizes ------------------------------------------------------------------------------------------------
def test_every_video_token_enters_and_the_budget_is_what_layers_from_k_keep(model):
    assert model.video_token_count(8) == math.prod(model.video_geometry(8)) == 8 * 4 * 4  # the input sequence
    assert model.pruned_video_token_count(8) == 16  # prompt pooling's (8, 4, 4) / (2, 2, 2): the equal budget
    none = TokenLayout(dataclasses.replace(model.config, pooling="none"))
    assert model.image_token_count((50, 120)) == none.image_token_count((50, 120))
    assert none.pruned_video_token_count(8) == none.video_token_count(8) == 128  # nothing pruned in the LLM


def test_the_processor_expands_every_video_token_and_images_pass_as_under_none(mode_of):
    model = mode_of(video_token_budget=24)
    processor = PPLLaVAProcessor(build_world_tokenizer(), model.config)
    inputs = video_and_image_inputs(processor)
    ids = inputs["input_ids"]
    assert int((ids[0] == model.config.video_token_id).sum()) == model.video_token_count(8) == 128
    assert model.pruned_video_token_count(8) == 24
    with torch.no_grad():
        out = model(**inputs)
        image = model.image_tokens(inputs["pixel_values"], inputs["image_sizes"], inputs["image_crops"])[0]
    mode_of(pooling="none")
    with torch.no_grad():
        assert torch.equal(image, model.image_tokens(inputs["pixel_values"], inputs["image_sizes"], inputs["image_crops"])[0])
    assert out.logits.shape[:2] == ids.shape
    # The video's sample keeps 24 of its 128 video tokens; the image's sample keeps all of its tokens.
    dropped = (~out.kept).sum(1).tolist()
    assert dropped[0] == 128 - 24 and dropped[1] == 0


# --- (a) a budget of every token is 'none' ---------------------------------------------------------------
def test_a_budget_of_every_video_token_gives_nones_logits_and_tokens(model, mode_of):
    ids, mask = padded([row(model), row(model, prefix=(1,))], "left")
    vids = video(2)
    kw = dict(max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
    mode_of(video_token_budget=128)
    with torch.no_grad():
        ours = model(ids, mask, pixel_values_videos=vids)
        ours_new = model.generate(ids, mask, pixel_values_videos=vids, **kw)
    assert bool(ours.kept.all())
    mode_of(pooling="none")
    with torch.no_grad():
        plain = model(ids, mask, pixel_values_videos=vids)
        plain_new = model.generate(ids, mask, pixel_values_videos=vids, **kw)
    torch.testing.assert_close(ours.logits, plain.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours_new.sequences, plain_new.sequences)
    torch.testing.assert_close(torch.stack(ours_new.logits), torch.stack(plain_new.logits), rtol=1e-5, atol=1e-5)


# --- (b) against a plain reference --------------------------------------------------------------------------
def test_prefill_equals_transformers_eager_forward_pruned_by_hand(model):
    """Transformers' eager LLM to layer K-1 (`output_attentions`, `output_hidden_states`); the kept tokens
    picked by hand from the last token's attention row, mean over heads; then transformers' own LlamaModel
    /Qwen2Model forward over layers K.. on the kept hidden states at their original position ids."""
    cfg = model.config
    K, budget = cfg.fastv_layer, model.pruned_video_token_count(8)
    ids, vids = torch.tensor([row(model)]), video()
    eager = copy.deepcopy(model.language_model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        ours = model(ids, pixel_values_videos=vids)
        embeds = model.embed_inputs(ids, pixel_values_videos=vids)
        full = eager.model(inputs_embeds=embeds, output_attentions=True, output_hidden_states=True)
        attention = full.attentions[K - 1][0, :, -1].mean(0)  # layer K-1, the last token's row, mean over heads
        video_at = (ids[0] == cfg.video_token_id).nonzero().flatten()
        top = video_at[attention[video_at].topk(budget).indices]
        kept = torch.cat([(ids[0] != cfg.video_token_id).nonzero().flatten(), top]).sort().values
        tail = copy.deepcopy(eager.model)
        tail.layers = nn.ModuleList(list(tail.layers)[K:])
        # An explicit all-ones mask: without one (and without a cache) transformers reads the jumps in the
        # position ids as packed sequences and would mask across them.
        short = tail(inputs_embeds=full.hidden_states[K][:, kept], position_ids=kept[None],
                     attention_mask=torch.ones(1, len(kept), dtype=torch.long)).last_hidden_state
        reference = eager.lm_head(short)[0]
    assert torch.equal(ours.kept[0].nonzero().flatten(), kept)
    torch.testing.assert_close(ours.logits[0, -1], reference[-1], rtol=1e-5, atol=1e-5)  # the prefill's last
    torch.testing.assert_close(ours.logits[0, kept], reference, rtol=1e-5, atol=1e-5)  # and every kept position
    assert bool((ours.logits[0, ~ours.kept[0]] == 0).all())  # dropped positions have no logits


def test_the_query_row_equals_eager_output_attentions_with_padding(model):
    """fastv.query_attention (the one row, from layer K-1's projections) against eager attention maps,
    left padding, at every query position of every sample."""
    K = model.config.fastv_layer
    ids, mask = padded([row(model), row(model, prefix=(1,), suffix=(12,))], "left")
    eager = copy.deepcopy(model.language_model)
    eager.set_attn_implementation("eager")
    decoder = eager.model
    with torch.no_grad():
        embeds = model.embed_inputs(ids, pixel_values_videos=video(2))
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        full = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, output_attentions=True,
                       output_hidden_states=True)
        rope = decoder.rotary_emb(embeds, positions)
        for q in range(ids.shape[1] - 3, ids.shape[1]):
            query = torch.full((2,), q)
            ours = fastv.query_attention(decoder.layers[K - 1], full.hidden_states[K - 1], rope, mask, query)
            torch.testing.assert_close(ours, full.attentions[K - 1][:, :, q].mean(1), rtol=1e-6, atol=1e-6)


def test_grouped_query_attention_ranks_and_prunes_as_the_reference():
    gqa = tiny(llm_kv_heads=2)  # two query heads per key head
    test_prefill_equals_transformers_eager_forward_pruned_by_hand(gqa)
    test_the_query_row_equals_eager_output_attentions_with_padding(gqa)


def test_fastv_keep_is_fastv_selects_rule():
    g = torch.Generator().manual_seed(0)
    x, a = torch.randn(3, 40, 8, generator=g), torch.randn(3, 40, generator=g).round(decimals=1)  # ties
    for budget in (1, 7, 40):
        assert torch.equal(fastv_keep(a, budget), first_inputs(fastv_select(x, a, budget)))


# --- (c) the pruned cache against recomputing ----------------------------------------------------------------
def test_cached_generation_equals_recomputing_the_pruned_forward_for_each_token(model):
    """Generation through transformers' `generate` with the pruned cache against a loop without any cache:
    the pruned forward over the prompt and the tokens so far, ranked by the same last prompt token. Left
    padding, and two videos beside one (the second sample's pruned rows are left-filled): each step's
    logits, not only the greedy tokens (a random tiny LM repeats a few tokens whatever it reads)."""
    cfg = model.config
    ids, mask = padded([row(model, videos=2), row(model, prefix=(1,), suffix=(12, 13))], "left")
    vids, steps = video(3), 6
    lm = fastv.base_model(model.language_model)
    with torch.no_grad():
        cached = model.generate(ids, mask, pixel_values_videos=vids, max_new_tokens=steps, do_sample=False,
                                output_logits=True, return_dict_in_generate=True)
        plan = model._fastv_plan(ids, mask, None, vids)
        embeds, m = model.embed_inputs(ids, pixel_values_videos=vids), mask.clone()
        done, tokens, logits = torch.zeros(2, dtype=torch.bool), [], []
        for _ in range(steps):
            positions = (m.cumsum(1) - 1).masked_fill(m == 0, 0)  # as generate counts them
            hidden, _ = fastv.prefill(lm.model, plan, embeds, m, positions)
            logits.append(lm.lm_head(lm.model.norm(hidden[:, -1])))
            new = logits[-1].argmax(-1).masked_fill(done, cfg.pad_token_id)
            done |= new == cfg.eos_token_id
            tokens.append(new)
            embeds = torch.cat([embeds, lm.get_input_embeddings()(new)[:, None]], 1)
            m = torch.cat([m, torch.ones(2, 1, dtype=m.dtype)], 1)
    assert torch.equal(cached.sequences, torch.stack(tokens, 1))
    torch.testing.assert_close(torch.stack(cached.logits, 1), torch.stack(logits, 1), rtol=1e-5, atol=1e-5)


# --- (d) the cache's layers -----------------------------------------------------------------------------------
def test_the_cache_holds_the_whole_sequence_below_k_and_the_kept_tokens_from_k(model):
    K, layers = model.config.fastv_layer, model.config.llm_layers
    ids, vids = torch.tensor([row(model, videos=2)]), video(2)
    full, short = ids.shape[1], ids.shape[1] - 2 * (128 - 16)
    with torch.no_grad():
        out = model(ids, pixel_values_videos=vids, use_cache=True)
        made = model.generate(ids, pixel_values_videos=vids, max_new_tokens=4, do_sample=False,
                              return_dict_in_generate=True)
    assert isinstance(out.cache, fastv.FastVCache) and int(out.kept.sum()) == short
    assert [out.cache.get_seq_length(i) for i in range(layers)] == [full] * K + [short] * (layers - K)
    assert out.cache.layers[K].keys.shape[-2] == short
    # after generating 4 tokens (the last one is not fed back): 3 more in every layer
    assert isinstance(made.cache, fastv.FastVCache)
    assert [made.cache.get_seq_length(i) for i in range(layers)] == [full + 3] * K + [short + 3] * (layers - K)


# --- (e) batches --------------------------------------------------------------------------------------------
def test_a_right_padded_batch_equals_each_sample_alone_even_with_two_videos_beside_one(model):
    """The training convention (right padding), with labels: sample 0 holds two videos, sample 1 one (its
    pruned row is left-filled with masked slots to sample 0's length)."""
    rows = [row(model, videos=2), row(model, prefix=(1,))]
    ids, mask = padded(rows, "right")
    labels = torch.full_like(ids, -100)
    for i, r in enumerate(rows):  # each sample's last two tokens are its answer
        labels[i, len(r) - 2 : len(r)] = ids[i, len(r) - 2 : len(r)]
    vids = video(3)
    with torch.no_grad():
        both = model(ids, mask, labels=labels, pixel_values_videos=vids)
        alone = [model(torch.tensor([r]), labels=labels[i : i + 1, : len(r)], pixel_values_videos=v)
                 for i, (r, v) in enumerate(zip(rows, (vids[:2], vids[2:])))]
    for i, (r, one) in enumerate(zip(rows, alone)):
        assert torch.equal(both.kept[i, : len(r)], one.kept[0]), i
        torch.testing.assert_close(both.logits[i, : len(r)], one.logits[0], rtol=1e-5, atol=1e-5)


def test_left_padded_generation_equals_each_sample_alone(model):
    rows = [row(model, prefix=(1, 20, 21, 22)), row(model, videos=2, suffix=(12,))]
    ids, mask = padded(rows, "left")
    vids = video(3)
    kw = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        batched = model.generate(ids, mask, pixel_values_videos=vids, **kw)
        for i, (r, v) in enumerate(zip(rows, (vids[:1], vids[1:]))):
            alone = model.generate(torch.tensor([r]), pixel_values_videos=v, **kw)
            assert torch.equal(batched.sequences[i], alone.sequences[0]), i
            torch.testing.assert_close(torch.stack(batched.logits, 1)[i], torch.stack(alone.logits, 1)[0],
                                       rtol=1e-5, atol=1e-5)
        torch.manual_seed(0)  # sampling and two sequences per prompt run through the same cache
        sampled = model.generate(ids, mask, pixel_values_videos=vids, max_new_tokens=4, do_sample=True,
                                 num_return_sequences=2)
    assert sampled.shape == (4, 4)


def test_labels_choose_the_query_before_the_answer_so_the_answer_does_not_choose_the_tokens(model):
    prompt = row(model)
    answer = [30, 31, 32]
    ids = torch.tensor([prompt + answer])
    labels = torch.tensor([[-100] * len(prompt) + answer])
    vids = video()
    with torch.no_grad():
        generating = model(torch.tensor([prompt]), pixel_values_videos=vids).kept[0]
        training = model(ids, labels=labels, pixel_values_videos=vids).kept[0, : len(prompt)]
        unlabelled = model(ids, pixel_values_videos=vids).kept[0, : len(prompt)]  # ranked by the answer's end
    assert torch.equal(training, generating)
    assert not torch.equal(unlabelled, generating)


def test_the_chat_asks_and_streams_under_fastv(tmp_path):
    """The chat's generation in a thread (a streamer) runs the same pruned prefill and cache."""
    from ppllava.chat import VideoChat
    from ppllava.data.scenes import random_scene, render
    from ppllava.data.world import write_video

    frames, _ = render(random_scene(np.random.default_rng(3), 64, 8, 2))
    write_video(tmp_path / "clip.mp4", frames, fps=8)
    model = tiny()
    chat = VideoChat(model, tmp_path / "clip.mp4", max_new_tokens=3)
    turn = chat.ask("what colour is the star ?")
    streamed = "".join(chat.stream("what colour is the star ?"))
    assert turn.visual_tokens == 128 and isinstance(turn.answer, str)
    assert chat.history[-1].answer == streamed.strip()
    assert "forward" not in fastv.base_model(model.language_model).model.__dict__


# --- training ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_training_through_fastv_backpropagates_and_checkpoints(family):
    model = tiny(llm_family=family).train()
    ids = torch.tensor([row(model) + [30, 31]] * 2)
    labels = torch.full_like(ids, -100)
    labels[:, -2:] = ids[:, -2:]
    out = model(ids, labels=labels, pixel_values_videos=video(2))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.projector.linear_1.weight.grad.abs().sum() > 0  # through the kept video tokens
    assert model.language_model.model.layers[-1].mlp.up_proj.weight.grad.abs().sum() > 0  # a layer after K
    model.gradient_checkpointing_enable()
    checkpointed = model(ids, labels=labels, pixel_values_videos=video(2)).loss
    checkpointed.backward()
    torch.testing.assert_close(checkpointed, out.loss)


# --- (f) bad values --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields,match", [
    (dict(fastv_layer=0), r"fastv_layer must be >= 1"),
    (dict(fastv_layer=4), r"fastv_layer 4 must be below llm_layers 4"),
    (dict(fastv_layer=1.5), r"fastv_layer must be an int"),
    (dict(video_token_budget=129), r"num_frames 8 with pooling 'fastv': video_token_budget 129 exceeds the 128 visual"),
    (dict(video_token_budget=0), r"video_token_budget must be >= 1"),
    (dict(num_frames=9), r"num_frames 9 with pooling 'fastv': video_token_budget None takes prompt pooling's count"),
])
def test_bad_configs_are_refused_by_name(fields, match):
    with pytest.raises(ValueError, match=match):
        PPLLaVAConfig.from_name("tiny", **{"pooling": "fastv", **fields})


def test_other_modes_leave_fastv_layer_unchecked_against_the_llm():
    assert PPLLaVAConfig.from_name("tiny", pooling="none", llm_layers=2).fastv_layer == 2


def test_bad_inputs_are_refused_by_name(model):
    cfg = model.config
    vids = video()
    ends_in_video = torch.tensor([[1, 10] + [cfg.video_token_id] * 128])
    with pytest.raises(ValueError, match=r"last prompt token, which is a video token \(or padding\) in sample\(s\) \[0\]"):
        model(ends_in_video, pixel_values_videos=vids)
    ids = torch.tensor([row(model)])
    with pytest.raises(ValueError, match=r"returns no \['output_hidden_states'\]"):
        model(ids, pixel_values_videos=vids, output_hidden_states=True)
    with pytest.raises(ValueError, match=r"makes its own KV cache"):
        model.generate(ids, pixel_values_videos=vids, max_new_tokens=2, cache=None)
    with pytest.raises(ValueError, match=r"a video of 1 frames cannot be pooled as configured"):
        model(torch.tensor([[1, 10] + [cfg.video_token_id] * 16 + [12]]), pixel_values_videos=video(frames=1))
    decoder = fastv.base_model(model.language_model).model
    plan = model._fastv_plan(ids, None, None, vids)
    with pytest.raises(ValueError, match=r"fastv_layer 4 must be in \[1, 3\] for an LLM of 4 layers"):
        fastv.prefill(decoder, plan._replace(layer=4), model.embed_inputs(ids, pixel_values_videos=vids))
    assert "forward" not in decoder.__dict__  # generate's override never outlives the call
