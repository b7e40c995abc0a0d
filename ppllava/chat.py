"""Talk with a model about one video, turn after turn, and see where it looked: each answer comes
with the CLIP relevance map `s` of its question (DESIGN.md §2, per frame), the weights that pooled
the video for it. The chat, tour and real-checkpoint notebooks use this.

    chat = VideoChat(model, "data/tiny/videos/test-000001.mp4")   # the world's tokenizer and template
    turn = chat.ask("what colour is the star ?")
    turn.answer, turn.relevance.shape                              # 'red', (T, g, g)
    for piece in chat.stream("what colour is the circle ?"):      # the answer as it is written
        print(piece, end="")
    chat.history[-1].answer

A real checkpoint chats through a processor built on its own tokenizer and chat template:
`VideoChat(model, "clip.mp4", PPLLaVAProcessor(tokenizer, model.config, template="tokenizer"))`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from threading import Thread
from typing import Dict, Iterator, List, Tuple, Union

import numpy as np
import torch
from transformers import TextIteratorStreamer

from ppllava.data.tokenizer import build_world_tokenizer
from ppllava.model.compress_tokens import PROMPT_MODES, TOWER_ATTENTION_MODES
from ppllava.processor import PPLLaVAProcessor


@dataclass
class ChatTurn:
    question: str
    answer: str
    relevance: torch.Tensor  # (T, g, g) float32: s of the question over the video's patches, sums to 1
    visual_tokens: int  # how many tokens the video became for this question


class VideoChat:
    """One conversation about one video. The video is decoded, processed and run through the vision
    tower once; each question then costs its CLIP relevance map (computed once: it pools the video
    and is returned to draw) and the LLM. The prompt carries the whole conversation; the video is
    pooled by the latest question, its CLIP prompt. (Pooling 'dominant' reads the tower's attention,
    which the features do not hold: there the tower runs again for each answer.)

    processor: a `PPLLaVAProcessor` (a real checkpoint's tokenizer and template), or a tokenizer to
    build one with the kit's `template`; default the world's tokenizer. video: a path or (T, H, W, 3)
    uint8 frames."""

    def __init__(self, model, video: Union[str, Path, np.ndarray], processor=None, *, template: str = "vicuna_v1",
                 max_new_tokens: int = 32):
        if isinstance(video, (str, Path)) and not Path(video).is_file():
            raise FileNotFoundError(f"{video}: no such video file")
        if not max_new_tokens >= 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not isinstance(processor, PPLLaVAProcessor):
            tokenizer = processor if processor is not None else build_world_tokenizer()
            processor = PPLLaVAProcessor(tokenizer, model.config, template=template)
        if processor.config.video_token_id != model.config.video_token_id:
            raise ValueError(f"the processor writes <video> as id {processor.config.video_token_id} but the model "
                             f"reads id {model.config.video_token_id}: build the processor with the model's config")
        self.model, self.processor, self.max_new_tokens = model.eval(), processor, max_new_tokens
        self._frames = processor.load_video(video)  # (T, H, W, 3) uint8, decoded once
        self._processed = processor.process_video(self._frames)  # (T, 3, S, S) float32, processed once
        self.pixels = self._processed[None].to(model.device, model.dtype)  # (1, T, 3, S, S)
        with torch.no_grad():  # the patch tokens depend on the pixels only: once per video
            self.features = model.video_features(self.pixels)  # (1, T*g*g, Dv)
        self.history: List[ChatTurn] = []

    def frames(self) -> np.ndarray:
        """The frames the model sees, (T, H, W, 3) uint8."""
        return self._frames

    def reset(self) -> None:
        """Forget the conversation (the video's features stay)."""
        self.history = []

    @torch.no_grad()
    def relevance(self, text: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """(r, s) of `text` over the video, each (T, g, g) float32: cosine, and softmax over all patches."""
        ids = self.processor.tokenize_clip([text]).to(self.model.device)
        r, s = self.model.relevance_maps(self.pixels, ids, video_features=self.features)
        return r[0].cpu(), s[0].cpu()

    def prompt(self, question: str) -> str:
        """The prompt text the LLM reads for `question` after the turns so far (placeholders unexpanded)."""
        return self.processor.apply_chat_template(self._messages(_clean(question)), add_generation_prompt=True)

    def _messages(self, question: str) -> List[Dict]:
        """The conversation as Hugging Face messages with content parts (the multimodal chat templates'
        convention; the kit's templates write the video part as "<video>\\n"), the video in the first turn."""
        said = [(t.question, t.answer) for t in self.history] + [(question, None)]
        messages = []
        for i, (q, a) in enumerate(said):
            parts = ([{"type": "video"}] if i == 0 else []) + [{"type": "text", "text": q}]
            messages.append({"role": "user", "content": parts})
            if a is not None:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
        return messages

    def _prepare(self, question: str) -> Tuple[str, dict, torch.Tensor]:
        """(question, the model's keyword inputs, s): s computed here once, pools the video and is returned."""
        question = _clean(question)
        prompt = self.prompt(question)
        if prompt.count("<video>") != 1:
            raise ValueError(f"the chat template put {prompt.count('<video>')} <video> placeholders in the prompt, "
                             "expected 1: it must write a {'type': 'video'} content part as '<video>'")
        batch = self.processor(text=[prompt], videos=[self._processed], clip_text=[question])
        length, positions = batch["input_ids"].shape[1], self.model.config.llm_max_positions
        if length + self.max_new_tokens > positions:
            raise ValueError(f"the conversation is {length} tokens (visual tokens included) and the answer may take "
                             f"{self.max_new_tokens}, past the LLM's {positions} positions: start over with reset()")
        device = self.model.device
        _, s = self.model.relevance_maps(self.pixels, batch["clip_input_ids"].to(device), video_features=self.features)
        inputs = dict(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                      pixel_values_videos=self.pixels)
        if self.model.config.pooling not in TOWER_ATTENTION_MODES:
            inputs["video_features"] = self.features
        if self.model.config.pooling in PROMPT_MODES:  # prompt and topk read it; other modes only draw it
            inputs["video_relevance"] = s
        return question, inputs, s

    def _generate_kwargs(self) -> dict:
        return dict(max_new_tokens=self.max_new_tokens, do_sample=False,
                    eos_token_id=self.processor.tokenizer.eos_token_id)

    def _record(self, question: str, new_tokens: torch.Tensor, s: torch.Tensor) -> ChatTurn:
        answer = self.processor.decode(new_tokens, skip_special_tokens=True).strip()
        turn = ChatTurn(question, answer, s[0].cpu(), self.model.video_token_count(self.pixels.shape[1]))
        self.history.append(turn)
        return turn

    @torch.no_grad()
    def ask(self, question: str) -> ChatTurn:
        """The greedy answer to `question`, after the turns so far; the turn joins the history."""
        question, inputs, s = self._prepare(question)
        new = self.model.generate(**inputs, **self._generate_kwargs())
        return self._record(question, new[0], s)

    def stream(self, question: str) -> Iterator[str]:
        """`ask`, yielding the answer's text as the LLM writes it (transformers' TextIteratorStreamer,
        generation in a thread). When the pieces run out the turn is `history[-1]` (also the
        generator's return value); the pieces joined are its answer before stripping."""
        question, inputs, s = self._prepare(question)
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        new: List[torch.Tensor] = []
        failed: List[BaseException] = []

        def generate() -> None:
            try:
                new.append(self.model.generate(**inputs, **self._generate_kwargs(), streamer=streamer))
            except BaseException as err:  # re-raised below in the caller's thread; end() unblocks its loop
                failed.append(err)
                streamer.end()

        thread = Thread(target=generate, daemon=True)
        thread.start()
        try:
            yield from (piece for piece in streamer if piece)  # the streamer sends "" until a word is whole
        finally:  # also when the caller stops early: wait for the thread, so no generation outlives the call
            thread.join()
        if failed:
            raise failed[0]
        return self._record(question, new[0][0], s)


def _clean(question: str) -> str:
    if not isinstance(question, str):
        raise ValueError(f"a question must be text, got {type(question).__name__}")
    question = " ".join(question.split())
    if not question:
        raise ValueError("the question is empty")
    if "<video>" in question or "<image>" in question:
        raise ValueError(f"the question {question!r} holds a media placeholder; the chat places the video itself")
    return question
