"""LLaVA-format datasets: conversation JSON/JSONL records with `image`, `images` or `video`,
read through the video readers, processed with the vision tower's own transforms, tokenized with
answer-only labels and collated into the model's batch.

Bad input never vanishes: a missing or corrupt file, a zero-frame video, an unknown media key,
a record without an answer or past the maximum length is an error naming the file and the record,
or, with `skip_bad=True`, a counted skip that the batch carries (`skipped`) for the end-of-epoch
report. A bad sample is never replaced by another one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ppllava.config import PPLLaVAConfig
from ppllava.data.conversation import IGNORE, clip_prompt_text, encode_conversation
from ppllava.data.video import MediaError, get_reader, sample_indices
from ppllava.model.token_layout import TokenLayout
from ppllava.ops import tokenize_clip_prompts

MEDIA_KEYS = ("video", "image", "images")


def read_records(path: Union[str, Path]) -> List[dict]:
    """A LLaVA annotation file: a JSON list, or JSONL (one record per line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such annotation file")
    text = path.read_text()
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of records")
    return records


def media_kind(record: dict, source: str = "?") -> str:
    """video | image | multi, or text for a text-only record (LLaVA's SFT mixes hold those too)."""
    keys = [k for k in MEDIA_KEYS if k in record]
    if len(keys) > 1:
        raise ValueError(f"{source}: record {record.get('id', '?')} has several media keys {keys}")
    if not keys:
        human = " ".join(t.get("value", "") for t in record.get("conversations", []) if t.get("from") == "human")
        if "<image>" in human or "<video>" in human:
            unknown = sorted(set(record) - {"id", "conversations"})
            raise ValueError(f"{source}: record {record.get('id', '?')} has media placeholders but no media key of "
                             f"{MEDIA_KEYS} (has {unknown})")
        return "text"
    return {"video": "video", "image": "image", "images": "multi"}[keys[0]]


@dataclass
class Sample:
    id: str
    kind: str  # video | image | multi | text
    input_ids: List[int]
    labels: List[int]
    clip_text: str
    pixels: Optional[torch.Tensor]  # video (T, 3, S, S); images (n, crops, 3, S, S); text None
    image_sizes: List[List[int]] = field(default_factory=list)
    image_crops: List[int] = field(default_factory=list)
    repeated_frames: int = 0
    record: dict = field(default_factory=dict)


class MediaProcessor:
    """The vision tower's transforms: CLIP's for video frames, LLaVA-NeXT's any-resolution crops for
    images (single crop for the images of a multi-image set)."""

    def __init__(self, config: PPLLaVAConfig):
        from transformers import CLIPImageProcessor, LlavaNextImageProcessor

        size = {"shortest_edge": config.image_size}
        crop = {"height": config.image_size, "width": config.image_size}
        self.frames = CLIPImageProcessor(size=size, crop_size=crop)
        self.images = LlavaNextImageProcessor(size=size, crop_size=crop,
                                              image_grid_pinpoints=[list(p) for p in config.image_grid_pinpoints])

    def video(self, frames: np.ndarray) -> torch.Tensor:  # (T, H, W, 3) uint8 -> (T, 3, S, S)
        return self.frames(list(frames), return_tensors="pt")["pixel_values"]

    def image(self, image: np.ndarray, single_crop: bool = False):
        out = self.images([image], return_tensors="pt")
        pixels, size = out["pixel_values"][0], out["image_sizes"][0].tolist()
        return (pixels[:1], size, 1) if single_crop else (pixels, size, pixels.shape[0])


class LLaVADataset(Dataset):
    def __init__(self, annotations: Union[str, Path, List[dict]], config: PPLLaVAConfig, tokenizer, *,
                 media_root: Optional[Union[str, Path]] = None, template: str = "vicuna_v1", reader: str = "decord",
                 sampling: str = "uniform", num_frames: Optional[int] = None, fps: Optional[float] = None,
                 max_length: int = 2048, skip_bad: bool = False, seed: int = 0, tasks: Optional[Sequence[str]] = None,
                 cache_mb: float = 0):
        in_memory = isinstance(annotations, list)
        if in_memory and media_root is None:
            raise ValueError("records given in memory need a media_root")
        self.source = "<records>" if in_memory else str(annotations)
        self.root = Path(media_root) if media_root is not None else Path(annotations).parent
        self.config, self.tokenizer, self.template = config, tokenizer, template
        self.reader, self.sampling, self.fps = get_reader(reader), sampling, fps
        self.num_frames = num_frames or config.num_frames
        self.max_length, self.skip_bad, self.seed = max_length, skip_bad, seed
        self.layout, self.processor = TokenLayout(config), MediaProcessor(config)
        self.records, self.kinds, self.invalid = [], [], []
        # Decoded, processed media by record index, up to cache_mb megabytes: an epoch after the first
        # reads no file (decoding and CLIP's transforms were a fifth of a tiny SFT step). Exact, since a
        # record's frames and crops are the same every epoch (random sampling is seeded by the index).
        # It lives in the loading process: with num_workers > 0, each (persistent) worker holds its own.
        if not cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.cache: Dict[int, tuple] = {}
        self.cache_room = int(cache_mb * 2**20)
        for record in annotations if in_memory else read_records(annotations):
            if tasks is not None and record.get("task") not in tasks:  # e.g. captions only for stage 1
                continue
            try:  # checks that need no decoding happen once, here
                kind = media_kind(record, self.source)
                turns = record.get("conversations") or []
                if not turns or turns[-1].get("from") != "gpt" or not str(turns[-1].get("value", "")).strip():
                    raise ValueError(f"{self.source}: record {record.get('id', '?')} has no answer")
            except ValueError as err:
                if not skip_bad:
                    raise
                self.invalid.append(str(err))
                continue
            self.records.append(record)
            self.kinds.append(kind)

    def __len__(self) -> int:
        return len(self.records)

    def _fail(self, record: dict, message: str) -> None:
        raise MediaError(f"{self.source}: record {record.get('id', '?')}: {message}")

    def _video(self, record: dict, index: int):
        path = self.root / record["video"]
        total = self.reader.frame_count(path)
        if total == 0:
            self._fail(record, f"{path} has zero frames")
        video_fps = self.reader.fps(path) if self.sampling == "fps" else None
        rng = np.random.default_rng((self.seed, index)) if self.sampling == "random" else None
        indices, repeated = sample_indices(total, self.num_frames, self.sampling, rng=rng, video_fps=video_fps, fps=self.fps)
        return self.processor.video(self.reader.read(path, indices)), repeated

    def _image(self, record: dict, name: str, single_crop: bool):
        path = self.root / name
        if not path.is_file():
            self._fail(record, f"{path}: no such image file")
        try:
            image = np.array(Image.open(path).convert("RGB"))  # a writable copy for the processor
        except Exception as err:
            self._fail(record, f"{path} cannot be decoded ({err})")
        return self.processor.image(image, single_crop)

    def _media(self, index: int, record: dict, kind: str, rid: str) -> tuple:
        """(pixels, image sizes, crops per image, repeated frames) of a record, decoded now and kept
        while the cache has room."""
        sizes, crops, repeated = [], [], 0
        try:
            if kind == "video":
                pixels, repeated = self._video(record, index)
            elif kind == "text":
                pixels = None
            else:
                names = [record["image"]] if kind == "image" else list(record["images"])
                items = [self._image(record, name, single_crop=kind == "multi") for name in names]
                most = max(p.shape[0] for p, _, _ in items)
                pixels = torch.stack([torch.cat([p, p.new_zeros(most - p.shape[0], *p.shape[1:])]) for p, _, _ in items])
                sizes, crops = [s for _, s, _ in items], [c for _, _, c in items]
        except MediaError as err:
            if str(err).startswith(self.source):
                raise
            raise MediaError(f"{self.source}: record {rid}: {err}") from err
        media = (pixels, sizes, crops, repeated)
        size = 0 if pixels is None else pixels.numel() * pixels.element_size()
        if size <= self.cache_room:
            self.cache_room -= size
            self.cache[index] = media
        return media

    def load(self, index: int) -> Sample:
        """The processed sample, raising MediaError/ValueError (naming file and record) on bad input."""
        record, kind = self.records[index], self.kinds[index]
        rid = str(record.get("id", index))
        pixels, sizes, crops, repeated = self.cache.get(index) or self._media(index, record, kind, rid)
        ids, labels = encode_conversation(record["conversations"], self.tokenizer, self.template, rid)
        try:
            ids_expanded = self.layout.expand_placeholders(
                ids, image_sizes=sizes, image_crops=crops, video_frames=[pixels.shape[0]] if kind == "video" else [])
        except ValueError as err:
            raise ValueError(f"{self.source}: record {rid}: {err}") from err
        labels = self._expand_labels(ids, labels, ids_expanded)
        if len(ids_expanded) > self.max_length:
            raise ValueError(f"{self.source}: record {rid} is {len(ids_expanded)} tokens, past max_length {self.max_length}")
        clip_text = clip_prompt_text(record["conversations"], self.config.clip_prompt)
        return Sample(rid, kind, ids_expanded, labels, clip_text, pixels, sizes, crops, repeated, record)

    def _expand_labels(self, ids: List[int], labels: List[int], expanded: List[int]) -> List[int]:
        media = {self.config.image_token_id, self.config.video_token_id}
        out, j = [], 0
        for token, label in zip(ids, labels):
            if token in media:
                while j < len(expanded) and expanded[j] == token:
                    out.append(IGNORE)
                    j += 1
            else:
                out.append(label)
                j += 1
        return out

    def __getitem__(self, index: int):
        if not self.skip_bad:
            return self.load(index)
        try:
            return self.load(index)
        except (MediaError, ValueError) as err:  # counted and reported, never replaced
            return {"skipped": str(err), "id": str(self.records[index].get("id", index))}


class Collator:
    """Samples -> the model's keyword batch. Pads ids (right for training, left for generation)
    and crops; CLIP prompts tokenized at the model's text context (truncation warns)."""

    def __init__(self, config: PPLLaVAConfig, pad_token_id: int, clip_tokenizer=None, padding_side: str = "right",
                 oracle: bool = False):
        if clip_tokenizer is None:
            import open_clip

            clip_tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the bundled BPE vocabulary, offline
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.config, self.pad, self.clip_tokenizer, self.side = config, pad_token_id, clip_tokenizer, padding_side
        self.oracle = oracle  # add video_relevance from the records' boxes (ppllava.data.oracle)

    def __call__(self, items: Sequence) -> Dict[str, object]:
        skipped = [item["skipped"] for item in items if isinstance(item, dict)]
        samples: List[Sample] = [item for item in items if isinstance(item, Sample)]
        batch: Dict[str, object] = {"skipped": skipped, "ids": [s.id for s in samples], "kinds": [s.kind for s in samples]}
        if not samples:
            return batch
        length = max(len(s.input_ids) for s in samples)
        ids = torch.full((len(samples), length), self.pad, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(samples), length), dtype=torch.long)
        for i, s in enumerate(samples):
            n = len(s.input_ids)
            where = slice(length - n, length) if self.side == "left" else slice(0, n)
            ids[i, where], labels[i, where], mask[i, where] = torch.tensor(s.input_ids), torch.tensor(s.labels), 1
        batch.update(input_ids=ids, attention_mask=mask, labels=labels,
                     clip_input_ids=tokenize_clip_prompts([s.clip_text for s in samples], self.clip_tokenizer,
                                                          self.config.text_context_length),
                     repeated_frames=sum(s.repeated_frames for s in samples))
        videos = [s.pixels for s in samples if s.kind == "video"]
        if videos:
            if len({v.shape for v in videos}) > 1:
                raise ValueError(f"videos of different shapes in one batch: {sorted({tuple(v.shape) for v in videos})}")
            batch["pixel_values_videos"] = torch.stack(videos)
            if self.oracle:
                from ppllava.data.oracle import oracle_relevance

                cfg = self.config
                batch["video_relevance"] = torch.stack([oracle_relevance(s.record, videos[0].shape[0], cfg.image_size,
                                                                         cfg.patch_size) for s in samples if s.kind == "video"])
        images = [(s.pixels[j], size, crops) for s in samples if s.kind in ("image", "multi")
                  for j, (size, crops) in enumerate(zip(s.image_sizes, s.image_crops))]
        if images:
            most = max(p.shape[0] for p, _, _ in images)
            batch["pixel_values"] = torch.stack([torch.cat([p, p.new_zeros(most - p.shape[0], *p.shape[1:])]) for p, _, _ in images])
            batch["image_sizes"] = [size for _, size, _ in images]
            batch["image_crops"] = [crops for _, _, crops in images]
        return batch


MODEL_KEYS = ("input_ids", "attention_mask", "labels", "clip_input_ids", "pixel_values", "image_sizes", "image_crops",
              "pixel_values_videos", "video_relevance")


def model_inputs(batch: Dict[str, object]) -> Dict[str, object]:
    """The part of a collated batch the model's forward takes."""
    return {k: batch[k] for k in MODEL_KEYS if k in batch}
