"""LLaVA-format datasets: conversation JSON/JSONL records with `image`, `images` or `video`,
made into model inputs by the `PPLLaVAProcessor` (reader, the vision tower's transforms, answer-only
labels with placeholders expanded, padding, CLIP prompts). The dataset owns the records, their
errors, the media cache and the seeds of random sampling.

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
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ppllava.config import PPLLaVAConfig
from ppllava.data.conversation import TEMPLATES, UnknownWords, clip_prompt_text
from ppllava.data.records import RecordError, check_record, read_entries, record_entry
from ppllava.data.records import media_kind, read_records  # noqa: F401  (long imported from here)
from ppllava.data.video import MediaError
from ppllava.ops import tokenize_clip_prompts
# MediaProcessor: long imported from here (it moved to the processor).
from ppllava.processor import (MediaProcessor, MediaTokenError, PPLLaVAProcessor, ProcessedImage,  # noqa: F401
                               pad_ids, stack_images, stack_videos)

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
    # A video's patch features (T*g*g, Dv) from a VideoFeatureStore, in place of its pixels (then None).
    features: Optional[torch.Tensor] = None
    frames: int = 0  # a video's frames, T

    def videos(self) -> List[torch.Tensor]:
        """The processed videos, as `PPLLaVAProcessor.__call__` takes them: [(T, 3, S, S)] or [] (also for
        a video served as `features`)."""
        return [self.pixels] if self.kind == "video" and self.pixels is not None else []

    def images(self) -> List[ProcessedImage]:
        """The processed images, as `PPLLaVAProcessor.__call__` takes them (each its own crops)."""
        if self.kind not in ("image", "multi"):
            return []
        return [ProcessedImage(self.pixels[j, :crops], size, crops)
                for j, (size, crops) in enumerate(zip(self.image_sizes, self.image_crops))]


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
                 convert: Optional[Callable[[dict], dict]] = None, video_features=None):
        in_memory = isinstance(annotations, list)
        if in_memory and media_root is None:
            raise ValueError("records given in memory need a media_root")
        if template not in TEMPLATES:
            raise ValueError(f"template must be one of {tuple(TEMPLATES)}, got {template!r}")
        positions = config.llm_max_positions
        max_length = positions if max_length is None else max_length
        if not 1 <= max_length <= positions:
            raise ValueError(f"max_length must be in [1, {positions}] (config.llm_max_positions), got {max_length}")
        self.source = "<records>" if in_memory else str(annotations)
        self.root = Path(media_root) if media_root is not None else Path(annotations).parent
        self.config, self.tokenizer, self.template = config, tokenizer, template
        # Checks reader, sampling, num_frames and fps (and names the one at fault).
        self.processor = PPLLaVAProcessor(tokenizer, config, template=template, reader=reader, sampling=sampling,
                                          num_frames=num_frames, fps=fps, seed=seed)
        self.reader, self.sampling, self.fps = self.processor.reader, sampling, fps
        self.num_frames = self.processor.num_frames
        self.max_length, self.skip_bad, self.seed = max_length, skip_bad, seed
        self.layout = self.processor.layout
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
        # (ids, labels) by (index, record field, media shape): tokenizing a conversation took half of a tiny SFT
        # step's loading, and a record's text never changes while the dataset holds it. Small (the token ids),
        # so always on, in whichever process loads.
        self.encoded: Dict[tuple, Tuple[tuple, tuple]] = {}
        # A VideoFeatureStore (ppllava.data.video_features): videos come as the frozen tower's features,
        # computed once and read from disk, never decoded again.
        self.video_features = video_features
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

    def _video(self, record: dict, index: int):
        # 'random' sampling is seeded by the record's index: the same frames every epoch (and in the cache).
        rng = np.random.default_rng((self.seed, index)) if self.sampling == "random" else None
        frames, repeated = self.processor.read_video(self.root / record["video"], rng)
        return self.processor.media.video(frames), repeated

    def _image(self, record: dict, name: str, single_crop: bool):
        # read_image's MediaError names the file; _media adds the record.
        return self.processor.process_image(self.root / name, single_crop)

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
                stacked = stack_images([self._image(record, name, single_crop=kind == "multi") for name in names])
                pixels, sizes, crops = stacked["pixel_values"], stacked["image_sizes"], stacked["image_crops"]
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
        features = None
        if kind == "video" and self.video_features is not None:
            try:
                features, repeated = self.video_features.features(self, index)
            except MediaError as err:  # the reader names the file; the record's place is added here
                raise self.error(index, str(err), "media", field="video") from err
            pixels, sizes, crops = None, [], []
            frames = features.shape[0] // self.layout.patch_grid ** 2
        else:
            pixels, sizes, crops, repeated = self.cache.get(index) or self._media(index, record, kind)
            frames = pixels.shape[0] if kind == "video" else 0
        ids, labels = self.encode(index, record["conversations"], kind, frames, sizes, crops)
        clip_text = clip_prompt_text(record["conversations"], self.config.clip_prompt)
        return Sample(rid, kind, ids, labels, clip_text, pixels, sizes, crops, repeated, record, features, frames)

    def encode(self, index: int, turns: List[dict], kind: str, frames: int, sizes, crops,
               field: str = "conversations") -> Tuple[List[int], List[int]]:
        """(ids, labels) of a conversation by the processor's `encode_training`, its faults placed in the file."""
        key = (index, field, frames, tuple(tuple(int(v) for v in hw) for hw in sizes), tuple(crops or ()))
        known = self.encoded.get(key)
        if known is not None:
            return list(known[0]), list(known[1])
        rid = str(self.records[index].get("id", index))
        try:
            ids, labels = self.processor.encode_training(
                turns, image_sizes=sizes, image_crops=crops, video_frames=[frames] if kind == "video" else [],
                record_id=rid)
        except UnknownWords as err:
            raise self.error(index, str(err), "unknown_words", field) from err
        except MediaTokenError as err:  # the tokenizer split a placeholder the text check counted
            raise self.error(index, str(err), "media_mismatch", field) from err
        if len(ids) > self.max_length:
            raise self.error(index, f"{len(ids)} tokens (visual tokens included), past max_length "
                                    f"{self.max_length}", "too_long", field)
        self.encoded[key] = (tuple(ids), tuple(labels))
        return ids, labels

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
    """Samples -> the model's keyword batch, by the processor's batching (`pad_ids`, `stack_videos`,
    `stack_images`): ids padded (right for training, left for generation), crops padded, CLIP prompts
    tokenized at the model's text context (truncation warns); with `oracle`, the oracle relevance."""

    def __init__(self, config: PPLLaVAConfig, pad_token_id: int, clip_tokenizer=None, padding_side: str = "right",
                 oracle: bool = False):
        if clip_tokenizer is None:
            import open_clip

            clip_tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the bundled BPE vocabulary, offline
        pad_ids([[0]], 0, padding_side)  # names a bad padding_side now, not at the first batch
        self.config, self.pad, self.clip_tokenizer, self.side = config, pad_token_id, clip_tokenizer, padding_side
        self.oracle = oracle  # add video_relevance from the records' boxes (ppllava.data.oracle)
        self.clip_ids: Dict[str, tuple] = {}  # CLIP prompt -> its ids, kept across batches (tokenize_clip_prompts)

    def __call__(self, items: Sequence) -> Dict[str, object]:
        skips = [item for item in items if isinstance(item, dict)]  # counted skips (skip_bad)
        samples: List[Sample] = [item for item in items if isinstance(item, Sample)]
        batch: Dict[str, object] = {"skipped": [s["skipped"] for s in skips], "skip_reasons": [s["reason"] for s in skips],
                                    "ids": [s.id for s in samples], "kinds": [s.kind for s in samples]}
        if not samples:
            return batch
        batch.update(pad_ids([s.input_ids for s in samples], self.pad, self.side, [s.labels for s in samples]),
                     clip_input_ids=tokenize_clip_prompts([s.clip_text for s in samples], self.clip_tokenizer,
                                                          self.config.text_context_length, self.clip_ids),
                     repeated_frames=sum(s.repeated_frames for s in samples))
        videos = [v for s in samples for v in s.videos()]
        features = [s.features for s in samples if s.features is not None]
        if videos and features:
            raise ValueError("a batch holds videos as pixels and as stored features: give every video of a dataset "
                             "the same form (a VideoFeatureStore serves them all)")
        if videos:
            batch["pixel_values_videos"] = stack_videos(videos)
        if features:
            batch["video_features"] = torch.stack(features)  # (n, T*g*g, Dv); stack_videos' checks are the model's here
        if (videos or features) and self.oracle:
            batch["video_relevance"] = oracle_batch(samples, self.config)
        images = [im for s in samples for im in s.images()]
        if images:
            batch.update(stack_images(images))
        return batch


def oracle_batch(samples: Sequence[Sample], config: PPLLaVAConfig) -> torch.Tensor:
    """The oracle relevance (`ppllava.data.oracle`) of each video sample's record: (n, T, g, g)."""
    from ppllava.data.oracle import oracle_relevance

    return torch.stack([oracle_relevance(s.record, s.frames, config.image_size, config.patch_size)
                        for s in samples if s.kind == "video"])


MODEL_KEYS = ("input_ids", "attention_mask", "labels", "clip_input_ids", "pixel_values", "image_sizes", "image_crops",
              "pixel_values_videos", "video_features", "video_relevance")


def model_inputs(batch: Dict[str, object]) -> Dict[str, object]:
    """The part of a collated batch the model's forward takes."""
    return {k: batch[k] for k in MODEL_KEYS if k in batch}
