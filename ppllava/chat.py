"""Ask a trained model about one video and see where it looked: the answer and the CLIP relevance
map of each question (DESIGN.md §2's `s`, per frame). The chat and tour notebooks use this.

    chat = VideoChat(model, "data/tiny/videos/test-000001.mp4")
    turn = chat.ask("what colour is the star ?")
    turn.answer, turn.relevance.shape          # 'red', (T, g, g)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np
import open_clip
import torch

from ppllava.data.dataset import LLaVADataset, MediaProcessor
from ppllava.data.tokenizer import build_world_tokenizer
from ppllava.data.video import get_reader, sample_indices
from ppllava.evaluate import generate_answers
from ppllava.ops import tokenize_clip_prompts


@dataclass
class ChatTurn:
    question: str
    answer: str
    relevance: torch.Tensor  # (T, g, g) float32: s over the video's patches, sums to 1
    visual_tokens: int  # how many tokens the video became for this question


class VideoChat:
    """Single-turn questions about one video: each question re-pools the video by its own prompt,
    the way the model was trained (one question per record)."""

    def __init__(self, model, video: Union[str, Path], tokenizer=None, *, template: str = "vicuna_v1",
                 max_new_tokens: int = 32):
        self.model, self.video = model.eval(), Path(video)
        if not self.video.is_file():
            raise FileNotFoundError(f"{self.video}: no such video file")
        self.tokenizer = tokenizer or build_world_tokenizer()
        self.template, self.max_new_tokens = template, max_new_tokens
        self.history: List[ChatTurn] = []
        reader = get_reader("decord")  # PyAV for a file decord refuses (tiny frames, GIFs), with a warning
        # A video shorter than num_frames repeats frames in order; kept here so it can be shown, not hidden.
        indices, self.repeated_frames = sample_indices(reader.frame_count(self.video), model.config.num_frames)
        self._frames = reader.read(self.video, indices)  # decoded once; the notebooks draw them per question
        self.pixels = MediaProcessor(model.config).video(self._frames)  # (T, 3, S, S)
        self.clip_tokenizer = open_clip.get_tokenizer("ViT-B-32")  # bundled vocabulary, offline

    def frames(self) -> np.ndarray:
        """The frames the model sees, (T, H, W, 3) uint8."""
        return self._frames

    def _dataset(self, question: str) -> LLaVADataset:
        question = " ".join(question.split())
        if not question:
            raise ValueError("the question is empty")
        enc = self.tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
        unknown = [question[a:b] for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])
                   if i == self.tokenizer.unk_token_id]
        if unknown:
            raise ValueError(f"words outside the tokenizer's vocabulary: {unknown}")
        record = {"id": "chat", "video": self.video.name, "conversations": [
            {"from": "human", "value": f"<video>\n{question}"}, {"from": "gpt", "value": "?"}]}
        return LLaVADataset([record], self.model.config, self.tokenizer, media_root=self.video.parent,
                            template=self.template)

    @torch.no_grad()
    def relevance(self, text: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """(r, s) of `text` over the video, each (T, g, g) float32: cosine, and softmax over all patches."""
        ids = tokenize_clip_prompts([text], self.clip_tokenizer, self.model.config.text_context_length)
        pixels = self.pixels[None].to(self.model.device, self.model.dtype)
        r, s = self.model.relevance_maps(pixels, ids.to(self.model.device))
        return r[0].cpu(), s[0].cpu()

    @torch.no_grad()
    def ask(self, question: str) -> ChatTurn:
        dataset = self._dataset(question)
        answer = generate_answers(self.model, dataset, batch_size=1, max_new_tokens=self.max_new_tokens)[0]["predicted"]
        _, s = self.relevance(dataset[0].clip_text)
        turn = ChatTurn(question, answer.strip(), s, self.model.video_token_count(self.pixels.shape[0]))
        self.history.append(turn)
        return turn
