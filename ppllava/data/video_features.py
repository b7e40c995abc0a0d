"""The frozen vision tower's features of a dataset's videos, computed once and kept on disk.

Stage 2 trains with the vision tower frozen, so a video's patch features (`PPLLaVA.video_features`) are
the same at every epoch and in every run that starts from the same tower: notebook 07 trains fourteen
rows on three needle worlds, all from stages whose tower is the CLIP stage's. `FrozenFeatureCache`
(ppllava.model.feature_cache) saves the tower's work inside one run, but each step still decodes the
videos, transforms their frames and hashes the pixels to find them. `VideoFeatureStore` serves the
features in place of the pixels: each video record's sampled frames are decoded and sent through the
tower once (each distinct frame once: a needle video's frames repeat while nothing on screen moves),
written under the world's directory, and read back by every later epoch and run. The model takes them
as `video_features` without `pixel_values_videos` (`PPLLaVA.video_shape`).

Exact: the features are the tower's on the same pixels (tests/test_video_features.py compares them, and
the logits, with recomputing). A store directory is named by a digest of everything the features depend
on (the tower's weights and config, the frame transforms' size, the dataset's sampling), and each file by
its record id and the video file's size and modification time: another tower, another sampling or a
rewritten video is another key, never a stale feature.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
import xxhash

from ppllava.model.feature_cache import FrozenFeatureCache

STORE_VERSION = 1  # bump when what a file holds changes


def update_with_state(digest, state: Dict[str, torch.Tensor]) -> None:
    """Feed a state dict's names and the exact bytes of its tensors, in name order, to a hashlib or xxhash
    digest: equal weights, equal digest; any changed bit, another."""
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # 0-d ones too


def tower_digest(model) -> str:
    """A digest of the vision tower's weights and config and the feature layer the kit reads."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": STORE_VERSION, "vision_config": model.vision_config.to_dict(),
                              "feature_layer": model.config.vision_feature_layer,
                              "image_size": model.config.image_size}, sort_keys=True, default=str).encode())
    update_with_state(digest, model.vision_tower.state_dict())
    return digest.hexdigest()[:20]


class VideoFeatureStore:
    """Patch features of video records, (T*g*g, Dv) each, under `root`/<key>/ (`key`: the tower and the
    dataset's sampling, see `directory`). `features(dataset, index)` reads a record's features, computing
    and writing them first when they are missing. Files are written whole or not at all (a temporary file
    renamed), so runs two at a time (`Recipe.at_once`) may share a store."""

    @staticmethod
    def refusal(pooling: str) -> Optional[str]:
        """Why a store cannot serve a model pooling by `pooling`, or None when it can."""
        from ppllava.model.compress_tokens import TOWER_ATTENTION_MODES

        if pooling in TOWER_ATTENTION_MODES:
            return (f"pooling {pooling!r} reads the vision tower's [CLS] attention and keys, which a VideoFeatureStore "
                    "does not hold")
        if pooling == "random":  # validation draws by each video's pixels (PPLLaVA._generators)
            return ("pooling 'random' draws by each video's pixels at validation: a VideoFeatureStore, which serves "
                    "features in their place, cannot serve it")
        return None

    def __init__(self, root: Union[str, Path], model):
        refused = self.refusal(model.config.pooling)
        if refused is not None:
            raise ValueError(refused)
        if any(p.requires_grad for p in model.vision_tower.parameters()):
            raise ValueError("a VideoFeatureStore serves a frozen vision tower's features, but this tower is trainable: "
                             "they would be stale after the first step")
        self.root, self.model = Path(root), model
        self.tower = tower_digest(model)
        self.computed = self.read = 0  # records sent through the tower / read from disk, in this process

    def directory(self, dataset) -> Path:
        """The store's directory for `dataset`'s sampling of its videos under this tower."""
        sampling = {"num_frames": dataset.num_frames, "sampling": dataset.sampling, "fps": dataset.fps,
                    "seed": dataset.seed if dataset.sampling == "random" else None,
                    "reader": type(dataset.reader).__name__}
        key = hashlib.sha256(json.dumps({"tower": self.tower, **sampling}, sort_keys=True).encode()).hexdigest()[:20]
        return self.root / key

    def path(self, dataset, index: int) -> Path:
        record = dataset.records[index]
        video = dataset.root / record["video"]
        stat = video.stat()  # a missing file is the reader's MediaError, raised when it is first computed
        name = xxhash.xxh3_64_hexdigest(f"{record['video']}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        rid = str(record.get("id", index)).replace(os.sep, "_")
        return self.directory(dataset) / f"{rid}-{name}.pt"

    def features(self, dataset, index: int) -> Tuple[torch.Tensor, int]:
        """(features (T*g*g, Dv), repeated frames) of video record `index` of `dataset`."""
        try:
            path = self.path(dataset, index)
        except OSError:  # no such video: the reader's MediaError, which the dataset places in its file, says so
            return self._compute(dataset, index, None)
        if path.exists():
            unique, inverse, repeated = self._load(path)
            self.read += 1
            return unique[inverse].flatten(0, 1), repeated
        return self._compute(dataset, index, path)

    def _load(self, path: Path) -> Tuple[torch.Tensor, torch.Tensor, int]:
        """A stored file, checked: (distinct frames' features (U, g*g, Dv), frame -> distinct frame (T,), repeated)."""
        cells, width = self.model.patch_grid ** 2, self.model.vision_config.hidden_size
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            unique, inverse, repeated = stored["unique"], stored["index"], int(stored["repeated"])
        except Exception as err:  # re-raised with the file named, never skipped
            raise ValueError(f"{path} is not a readable video feature file ({type(err).__name__}: {err}); "
                             "delete it and it is computed again") from err
        if (unique.ndim != 3 or tuple(unique.shape[1:]) != (cells, width) or inverse.ndim != 1
                or not 0 <= int(inverse.min()) <= int(inverse.max()) < unique.shape[0]):
            raise ValueError(f"{path} holds features of shape {tuple(unique.shape)} and a frame index of shape "
                             f"{tuple(inverse.shape)}, not (U, {cells}, {width}) and (T,) into U: delete it and it is "
                             "computed again")
        return unique, inverse, repeated

    def _compute(self, dataset, index: int, path) -> Tuple[torch.Tensor, int]:
        pixels, repeated = dataset._video(dataset.records[index], index)  # (T, 3, S, S); a MediaError names the file
        keys = FrozenFeatureCache.keys(pixels)  # equal keys, equal frames
        first = {}  # each distinct frame: where it is first seen
        for t, key in enumerate(keys):
            first.setdefault(key, t)
        slot = {key: i for i, key in enumerate(first)}
        inverse = torch.tensor([slot[key] for key in keys])  # frame t is distinct frame inverse[t]
        tower = next(self.model.vision_tower.parameters())
        with torch.no_grad():  # (U, g*g, Dv): each distinct frame once, on the tower's device, kept on the CPU
            unique = self.model._patch_features(pixels[list(first.values())].to(tower.device)).cpu()
        self.computed += 1
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            torch.save({"unique": unique.contiguous(), "index": inverse, "repeated": repeated}, partial)
            partial.replace(path)
        return unique[inverse].flatten(0, 1), repeated
