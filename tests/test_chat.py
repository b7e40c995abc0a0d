"""VideoChat: multi-turn, streamed, the video's features and each question's relevance computed once,
on the world's tokenizer and on real-format checkpoints with their own tokenizer and chat template.
(The trained world model's chat: tests/test_recipe.py.)"""
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import ppllava.model.ppllava as ppllava_module
from ppllava.chat import VideoChat
from ppllava.config import PPLLaVAConfig
from ppllava.data.scenes import random_scene, render
from ppllava.data.world import write_video
from ppllava.model import PPLLaVA, from_llava_next
from ppllava.model.tiny_checkpoints import clip_dir, llava_next_dir, released_ppllava_dir, tokenizer_dir
from ppllava.processor import PPLLaVAProcessor


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A world clip: 8 frames of 64 px, two objects."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    frames, _ = render(random_scene(np.random.default_rng(3), 64, 8, 2))
    write_video(path, frames, fps=8)
    return path


@pytest.fixture(scope="module")
def world_model():
    torch.manual_seed(0)
    return PPLLaVA(PPLLaVAConfig.from_name("tiny")).eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny LLaVA-NeXT and released-PPLLaVA directories, each with its own tokenizer and chat template."""
    root = tmp_path_factory.mktemp("checkpoints")
    clip = clip_dir(root / "clip")
    return {"llava_next": tokenizer_dir(llava_next_dir(root / "llava")),
            "released": tokenizer_dir(released_ppllava_dir(root / "released", clip)), "clip": clip}


def load(kind, world_model, checkpoints):
    """(model, processor): the world's, or a checkpoint's with its own tokenizer and chat template."""
    if kind == "world":
        return world_model, None
    model = from_llava_next(checkpoints[kind], checkpoints["clip"], pooling="prompt").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoints[kind]), local_files_only=True)
    return model, PPLLaVAProcessor(tokenizer, model.config, template="tokenizer")


def make_chat(kind, world_model, checkpoints, video, **kwargs):
    model, processor = load(kind, world_model, checkpoints)
    return VideoChat(model, video, processor, **kwargs)


def spy(monkeypatch, owner, name):
    """Record the (args, kwargs) of every call of owner.name, which still runs."""
    calls, original = [], getattr(owner, name)

    def recorded(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, recorded)
    return calls


def test_the_history_reaches_the_prompt_and_the_latest_question_is_the_clip_prompt(world_model, video, monkeypatch):
    chat = VideoChat(world_model, video)
    first = chat.ask("what colour is the star ?")
    generated = spy(monkeypatch, world_model, "generate")
    relevance = spy(monkeypatch, world_model, "relevance_maps")
    second = chat.ask("  what   shape is the red object ?")
    assert [t.question for t in chat.history] == ["what colour is the star ?", "what shape is the red object ?"]
    assert second is chat.history[-1] and first.answer  # the untrained model says something: the check below bites
    tokenizer = chat.processor.tokenizer
    read = tokenizer.decode(generated[0][1]["input_ids"][0], skip_special_tokens=True)
    said = [tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"])  # as the decoder spaces them
            for text in ("what colour is the star ?", first.answer, "what shape is the red object ?")]
    at = read.index(said[0])
    at = read.index(said[1], at + len(said[0]))  # each one after the other (ValueError: missing or out of order)
    read.index(said[2], at + len(said[1]))
    prompt = chat.prompt("and the circle ?")
    assert prompt.count("<video>") == 1 and prompt.startswith(chat.processor.apply_chat_template(
        [{"from": "human", "value": "<video>\nwhat colour is the star ?"}]))
    assert prompt.index(second.answer) < prompt.index("and the circle ?")
    # The second turn's CLIP prompt is its own question, not the conversation.
    (args, kwargs), = relevance
    assert torch.equal(args[1].cpu(), chat.processor.tokenize_clip(["what shape is the red object ?"]))


@pytest.mark.parametrize("kind", ["world", "llava_next", "released"])
def test_streamed_pieces_join_to_the_greedy_answer_of_the_uncached_model(kind, world_model, checkpoints, video):
    chat = make_chat(kind, world_model, checkpoints, video, max_new_tokens=12)
    chat.ask("what colour is the star ?")
    question = "what colour is the circle ?"
    prompt = chat.prompt(question)  # the first turn, then this question
    pieces = list(chat.stream(question))
    streamed = chat.history.pop()
    asked = chat.ask(question)
    assert len(pieces) >= 1 and all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces).strip() == streamed.answer == asked.answer != ""
    assert torch.equal(streamed.relevance, asked.relevance)
    # The same turn without the chat's caches: the processor reads the file, the model computes everything.
    processor = chat.processor
    inputs = processor(text=[prompt], videos=[video], clip_text=[question])
    new = chat.model.generate(**inputs, max_new_tokens=12, do_sample=False,
                              eos_token_id=processor.tokenizer.eos_token_id)
    assert processor.decode(new[0], skip_special_tokens=True).strip() == asked.answer


def test_a_stream_left_early_records_no_turn_and_the_chat_goes_on(world_model, video):
    chat = VideoChat(world_model, video)
    for _ in chat.stream("what colour is the star ?"):
        break
    assert chat.history == []
    assert chat.ask("what colour is the star ?").question == "what colour is the star ?"


@pytest.mark.parametrize("kind", ["world", "released"])
def test_features_once_per_video_and_relevance_once_per_question(kind, world_model, checkpoints, video, monkeypatch):
    model, processor = load(kind, world_model, checkpoints)
    tower_runs = []
    # The patch embedding starts every pass through the tower (_tower_features calls the tower's
    # parts, not its forward, to skip the layers it does not read).
    hook = model.vision_tower.embeddings.register_forward_hook(lambda *_: tower_runs.append(1))
    features = spy(monkeypatch, model, "video_features")
    relevance = spy(monkeypatch, ppllava_module, "prompt_relevance")  # every path to s goes through it
    prompts = spy(monkeypatch, model, "encode_prompts")
    try:
        chat = VideoChat(model, video, processor)
        chat.ask("what colour is the star ?")
        chat.ask("what colour is the circle ?")
        list(chat.stream("what shape is the red object ?"))
        chat.relevance("a star")
    finally:
        hook.remove()
    assert len(features) == len(tower_runs) == 1
    assert len(relevance) == len(prompts) == 4  # three questions and one drawn prompt, each once


def test_bad_questions_are_named(world_model, checkpoints, video):
    chat = VideoChat(world_model, video)
    with pytest.raises(ValueError, match="zebra"):  # the world's word-level vocabulary
        chat.ask("what colour is the zebra ?")
    with pytest.raises(ValueError, match="empty"):
        chat.ask("  \n ")
    with pytest.raises(ValueError, match="placeholder"):
        chat.ask("<video> what colour is the star ?")
    with pytest.raises(ValueError, match="a question must be text, got int"):
        chat.ask(3)
    real = make_chat("llava_next", world_model, checkpoints, video)
    with pytest.raises(ValueError, match="für"):  # outside the tiny tokenizer's characters
        list(real.stream("what colour is the star für ?"))
    assert chat.history == real.history == []


def test_bad_videos_and_settings_are_named(world_model, video, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        VideoChat(world_model, tmp_path / "nowhere.mp4")
    with pytest.raises(ValueError, match=r"video frames must be uint8 RGB \(T, H, W, 3\)"):
        VideoChat(world_model, np.zeros((8, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        VideoChat(world_model, video, max_new_tokens=0)
    other = PPLLaVAConfig.from_name("tiny", image_size=32)  # a processor made for another model
    with pytest.raises(ValueError, match=r"pixel_values_videos must have shape \(n, T, 3, 64, 64\)"):
        VideoChat(world_model, video, PPLLaVAProcessor(VideoChat(world_model, video).processor.tokenizer, other))
    renumbered = PPLLaVAConfig.from_name("tiny", image_token_id=4, video_token_id=3)
    with pytest.raises(ValueError, match="writes <video> as id 3 but the model reads id 4"):
        VideoChat(world_model, video, PPLLaVAProcessor(VideoChat(world_model, video).processor.tokenizer, renumbered))
    long = VideoChat(world_model, video, max_new_tokens=1020)
    with pytest.raises(ValueError, match=r"past the LLM's 1024 positions: start over with reset\(\)"):
        long.ask("what colour is the star ?")


def test_a_template_that_drops_the_video_is_refused(world_model, checkpoints, video):
    model, processor = load("llava_next", world_model, checkpoints)
    processor.tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% endfor %}"
    chat = VideoChat(model, video, processor)
    with pytest.raises(ValueError, match=r"put 0 <video> placeholders in the prompt, expected 1"):
        chat.ask("what colour is the star ?")


def test_a_failure_while_streaming_reaches_the_caller(world_model, video, monkeypatch):
    chat = VideoChat(world_model, video)

    def fail(**kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(world_model.language_model, "generate", fail)
    with pytest.raises(RuntimeError, match="simulated"):  # raised here, not left hanging in the thread
        list(chat.stream("what colour is the star ?"))
    assert chat.history == []


def test_a_tokenizer_in_place_of_a_processor_and_the_drawn_relevance(world_model, video):
    """As notebooks 01, 02 and 07 call it: a tokenizer, wrapped in a processor with the kit's template."""
    from ppllava.data.tokenizer import build_world_tokenizer

    chat = VideoChat(world_model, video, build_world_tokenizer(), template="chatml")
    assert chat.processor.template == "chatml" and chat.prompt("what colour is the star ?").count("<|im_start|>") == 3
    r, s = chat.relevance("a red star")
    assert r.shape == s.shape == (8, 4, 4) and float(r.abs().max()) <= 1 + 1e-5
    assert float(s.sum()) == pytest.approx(1, abs=1e-5)


def test_the_models_cached_features_are_checked(world_model, video):
    chat = VideoChat(world_model, video)
    inputs = chat.processor(text=[chat.prompt("what colour is the star ?")], videos=[video])
    with pytest.raises(ValueError, match=r"video_features must have shape \(n, T\*g\*g, Dv\) = \(1, 128, 64\) "
                                         r"for pixel_values_videos of shape \(1, 8, 3, 64, 64\), got \(1, 5, 64\)"):
        world_model.generate(**inputs, video_features=chat.features[:, :5], max_new_tokens=1)
    text_only = chat.processor(text=["what colour is the star ?"])
    with pytest.raises(ValueError, match="video tokens and features do not match, tokens: 0, features: 16"):
        world_model.generate(**text_only, video_features=chat.features, max_new_tokens=1)
    with pytest.raises(ValueError, match=r"video_features must have shape \(n, T\*g\*g, Dv\) with g\*g = 16 .* "
                                         r"got \(1, 5, 64\)"):  # alone, checked on their own
        world_model.generate(**{k: v for k, v in inputs.items() if k != "pixel_values_videos"},
                             video_features=chat.features[:, :5], max_new_tokens=1)
