"""LLaVA-format datasets: conversation JSON/JSONL records with `image`, `images` or `video`,
read through the video readers, processed with the vision tower's own transforms, tokenized with
answer-only labels and collated into the model's batch.

Bad input never vanishes. Every record is checked once, when the dataset is built (`check_record`:
its JSON, its conversation, its media keys and placeholders); media and length are checked when it is
loaded. Each fault is a `RecordError` naming the file, the JSONL line (or JSON list index), the record
id and the field, or, with `skip_bad=True`, a skip counted by its `reason`: those found at build time
in `dataset.invalid`, those found at load time carried by the batch (`skipped`) to `SkipReport`.
A bad sample is never replaced by another one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ppllava.config import PPLLaVAConfig
from ppllava.data.conversation import IGNORE, TEMPLATES, UnknownWords, clip_prompt_text, encode_conversation
from ppllava.data.records import RecordError, check_record, read_entries, record_entry
from ppllava.data.records import media_kind, read_records  # noqa: F401  (long imported from here)
from ppllava.data.video import SAMPLING, MediaError, get_reader, read_image, sample_indices
from ppllava.model.token_layout import TokenLayout
from ppllava.ops import tokenize_clip_prompts

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
    images (single crop for the images of a multi-image set).

    Pixels are (..., H, W, 3) and the processors are told so: left to guess, they read a picture 1, 3
    or 4 pixels tall as channels-first (a red picture came out grey, with its size swapped)."""

    def __init__(self, config: PPLLaVAConfig):
        from transformers import CLIPImageProcessor, LlavaNextImageProcessor

        size = {"shortest_edge": config.image_size}
        crop = {"height": config.image_size, "width": config.image_size}
        self.frames = CLIPImageProcessor(size=size, crop_size=crop)
        self.images = LlavaNextImageProcessor(size=size, crop_size=crop,
                                              image_grid_pinpoints=[list(p) for p in config.image_grid_pinpoints])

    def video(self, frames: np.ndarray) -> torch.Tensor:
        """frames (`np.ndarray` uint8 of shape `(T, H, W, 3)`) -> pixels (`torch.FloatTensor` of shape `(T, 3, S, S)`)."""
        _check_rgb(frames, 4, "video frames", "(T, H, W, 3)")
        return self.frames(list(frames), return_tensors="pt", input_data_format="channels_last")["pixel_values"]

    def image(self, image: np.ndarray, single_crop: bool = False):
        """image (`np.ndarray` uint8 of shape `(H, W, 3)`) -> (pixels (`torch.FloatTensor` of shape
        `(crops, 3, S, S)`), [H, W], crops); one crop, the whole picture resized, with `single_crop`."""
        _check_rgb(image, 3, "image", "(H, W, 3)")
        out = self.images([image], return_tensors="pt", input_data_format="channels_last")
        pixels, size = out["pixel_values"][0], out["image_sizes"][0].tolist()
        return (pixels[:1], size, 1) if single_crop else (pixels, size, pixels.shape[0])


def _check_rgb(pixels: np.ndarray, ndim: int, what: str, layout: str) -> None:
    if pixels.ndim != ndim or pixels.shape[-1] != 3 or pixels.dtype != np.uint8 or 0 in pixels.shape:
        raise ValueError(f"{what} must be uint8 RGB {layout}, got {pixels.dtype} of shape {tuple(pixels.shape)}")


class LLaVADataset(Dataset):
    """Records of an annotation file (or a list in memory) as Samples.

    max_length: the most tokens a sample may have, visual tokens included (default and ceiling: the
    LLM's positions, config.llm_max_positions); a longer record is a RecordError ("too_long").
    convert: maps each raw record to a LLaVA record before it is checked (PreferenceDataset's pairs).
    """

    def __init__(self, annotations: Union[str, Path, List[dict]], config: PPLLaVAConfig, tokenizer, *,
                 media_root: Optional[Union[str, Path]] = None, template: str = "vicuna_v1", reader: str = "decord",
                 sampling: str = "uniform", num_frames: Optional[int] = None, fps: Optional[float] = None,
                 max_length: Optional[int] = None, skip_bad: bool = False, seed: int = 0,
                 tasks: Optional[Sequence[str]] = None, cache_mb: float = 0,
                 convert: Optional[Callable[[dict], dict]] = None):
        in_memory = isinstance(annotations, list)
        if in_memory and media_root is None:
            raise ValueError("records given in memory need a media_root")
        if template not in TEMPLATES:
            raise ValueError(f"template must be one of {tuple(TEMPLATES)}, got {template!r}")
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
        if num_frames is not None and not num_frames >= 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if sampling == "fps" and not (fps is not None and fps > 0):
            raise ValueError(f"sampling 'fps' needs fps > 0 (frames per second to sample), got fps={fps}")
        positions = config.llm_max_positions
        max_length = positions if max_length is None else max_length
        if not 1 <= max_length <= positions:
            raise ValueError(f"max_length must be in [1, {positions}] (config.llm_max_positions), got {max_length}")
        self.source = "<records>" if in_memory else str(annotations)
        self.root = Path(media_root) if media_root is not None else Path(annotations).parent
        self.config, self.tokenizer, self.template = config, tokenizer, template
        self.reader, self.sampling, self.fps = get_reader(reader), sampling, fps
        self.num_frames = config.num_frames if num_frames is None else num_frames
        self.max_length, self.skip_bad, self.seed = max_length, skip_bad, seed
        self.layout, self.processor = TokenLayout(config), MediaProcessor(config)
        # records[i] read from where[i]; invalid: the RecordErrors skipped here (skip_bad), by `reason`.
        self.records, self.kinds, self.where, self.invalid = [], [], [], []
        # Decoded, processed media by record index, up to cache_mb megabytes: an epoch after the first
        # reads no file (decoding and CLIP's transforms were a fifth of a tiny SFT step). Exact, since a
        # record's frames and crops are the same every epoch (random sampling is seeded by the index).
        # It lives in the loading process: with num_workers > 0, each (persistent) worker holds its own.
        if not cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.cache: Dict[int, tuple] = {}
        self.cache_room = int(cache_mb * 2**20)
        entries = ([record_entry(self.source, "list index", i, r) for i, r in enumerate(annotations)] if in_memory
                   else read_entries(annotations))
        for entry in entries:
            try:  # checks that need no decoding happen once, here
                if entry.fault is not None:
                    raise entry.fault
                record = entry.record if convert is None else convert(entry.record)
                if tasks is not None and record.get("task") not in tasks:  # e.g. captions only for stage 1
                    continue
                kind = check_record(record)
            except RecordError as err:
                err = err if err.file is not None else entry.error(err)
                if not skip_bad:
                    raise err from None
                self.invalid.append(err)
                continue
            self.records.append(record)
            self.kinds.append(kind)
            self.where.append(entry)

    def __len__(self) -> int:
        return len(self.records)

    def skipped_at_build(self) -> Dict[str, int]:
        """How many records were skipped when the dataset was built, by reason."""
        counts: Dict[str, int] = {}
        for err in self.invalid:
            counts[err.reason] = counts.get(err.reason, 0) + 1
        return counts

    def error(self, index: int, problem: str, reason: str, field: Optional[str] = None) -> RecordError:
        """A RecordError about record `index`, placed in its file."""
        return self.where[index].error(RecordError(problem, reason=reason, field=field))

    def _fail(self, record: dict, message: str) -> None:
        raise MediaError(message)  # placed in the file by _media

    def _video(self, record: dict, index: int):
        path = self.root / record["video"]
        total = self.reader.frame_count(path)
        if total == 0:
            self._fail(record, f"{path} has zero frames")
        video_fps = self.reader.fps(path) if self.sampling == "fps" else None
        if self.sampling == "fps" and not video_fps > 0:
            self._fail(record, f"{path}: no frame rate ({video_fps}), which sampling 'fps' needs")
        rng = np.random.default_rng((self.seed, index)) if self.sampling == "random" else None
        indices, repeated = sample_indices(total, self.num_frames, self.sampling, rng=rng, video_fps=video_fps, fps=self.fps)
        return self.processor.video(self.reader.read(path, indices)), repeated

    def _image(self, record: dict, name: str, single_crop: bool):
        # read_image's MediaError names the file; _media adds the record.
        return self.processor.image(read_image(self.root / name), single_crop)

    def _media(self, index: int, record: dict, kind: str) -> tuple:
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
        except MediaError as err:  # the reader names the file; the record's place is added here
            raise self.error(index, str(err), "media", field=kind if kind != "multi" else "images") from err
        media = (pixels, sizes, crops, repeated)
        size = 0 if pixels is None else pixels.numel() * pixels.element_size()
        if size <= self.cache_room:
            self.cache_room -= size
            self.cache[index] = media
        return media

    def load(self, index: int) -> Sample:
        """The processed sample, or a RecordError (naming file, line and record) on bad input."""
        record, kind = self.records[index], self.kinds[index]
        rid = str(record.get("id", index))
        pixels, sizes, crops, repeated = self.cache.get(index) or self._media(index, record, kind)
        try:
            ids, labels = encode_conversation(record["conversations"], self.tokenizer, self.template, rid)
        except UnknownWords as err:
            raise self.error(index, str(err), "unknown_words", "conversations") from err
        ids_expanded = self.expand(index, ids, kind, pixels, sizes, crops)
        labels = self._expand_labels(ids, labels, ids_expanded)
        clip_text = clip_prompt_text(record["conversations"], self.config.clip_prompt)
        return Sample(rid, kind, ids_expanded, labels, clip_text, pixels, sizes, crops, repeated, record)

    def expand(self, index: int, ids: List[int], kind: str, pixels, sizes, crops,
               field: str = "conversations") -> List[int]:
        """Ids with their placeholders expanded to visual tokens, no longer than max_length."""
        try:
            expanded = self.layout.expand_placeholders(
                ids, image_sizes=sizes, image_crops=crops, video_frames=[pixels.shape[0]] if kind == "video" else [])
        except ValueError as err:  # the tokenizer split a placeholder the text check counted
            raise self.error(index, str(err), "media_mismatch", field) from err
        if len(expanded) > self.max_length:
            raise self.error(index, f"{len(expanded)} tokens (visual tokens included), past max_length "
                                    f"{self.max_length}", "too_long", field)
        return expanded

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
        return self.serve(index, self.load)

    def serve(self, index: int, load: Callable[[int], object]):
        """load(index); with skip_bad, a record's fault becomes a counted skip, never another sample."""
        try:
            return load(index)
        except RecordError as err:
            if not self.skip_bad:
                raise
            return {"skipped": str(err), "reason": err.reason, "id": str(self.records[index].get("id", index))}
        except StopIteration as err:  # the DataLoader would take it for the end of the epoch
            raise RuntimeError(str(self.error(index, "loading raised StopIteration", "bug"))) from err

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
        skips = [item for item in items if isinstance(item, dict)]  # counted skips (skip_bad)
        samples: List[Sample] = [item for item in items if isinstance(item, Sample)]
        batch: Dict[str, object] = {"skipped": [s["skipped"] for s in skips], "skip_reasons": [s["reason"] for s in skips],
                                    "ids": [s.id for s in samples], "kinds": [s.kind for s in samples]}
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
