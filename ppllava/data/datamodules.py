"""LightningDataModules over a written world (or any LLaVA-format data laid out the same way):
interleaved SFT (image / video / multi-image mixed by ratio, each batch one media type), DPO pairs,
and CLIP post-pretraining pairs. `SkipReport` reports the counted skips (skip_bad=True) by reason: the
records dropped when the datasets were built, and those skipped while loading, at each epoch's end."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Sampler

from ppllava.config import PPLLaVAConfig
from ppllava.data.clip_pairs import ClipPairCollator, ClipPairDataset
from ppllava.data.dataset import Collator, LLaVADataset
from ppllava.data.preference import PreferenceCollator, PreferenceDataset


class MediaBatchSampler(Sampler[List[int]]):
    """Batches of one media type each (no padding of pixels across types), drawn by `mix` ratio.

    shuffle=True (training): per epoch, each type contributes round(mix * total batches) batches of
    freshly shuffled indices (a type with fewer samples than that wraps around); batch order is
    shuffled. shuffle=False (evaluation): every sample once, type by type, in file order."""

    def __init__(self, kinds: Sequence[str], batch_size: int, mix: Optional[Dict[str, float]] = None,
                 shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.by_kind: Dict[str, List[int]] = {}
        for i, kind in enumerate(kinds):
            self.by_kind.setdefault(kind, []).append(i)
        mix = mix or {k: len(v) for k, v in self.by_kind.items()}
        unknown = set(mix) - set(self.by_kind)
        if unknown and any(mix[k] > 0 for k in unknown):
            raise ValueError(f"mix names media types with no samples: {sorted(unknown)} (have {sorted(self.by_kind)})")
        total = sum(mix.get(k, 0) for k in self.by_kind)
        self.mix = {k: mix.get(k, 0) / total for k in self.by_kind}
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0
        self.total = len(kinds)
        # Under DDP each process takes every num_replicas-th batch of the same epoch's plan, the
        # plan cut to a multiple of num_replicas so every process runs the same number of steps.
        self.num_replicas, self.rank = num_replicas, rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> List[List[int]]:
        if not self.shuffle:
            return [idx[i : i + self.batch_size] for idx in self.by_kind.values() for i in range(0, len(idx), self.batch_size)]
        rng = np.random.default_rng((self.seed, self.epoch))
        n_batches = max(1, self.total // self.batch_size)
        batches = []
        for kind, share in self.mix.items():
            want = int(round(share * n_batches)) * self.batch_size
            pool = self.by_kind[kind]
            order = np.concatenate([rng.permutation(pool) for _ in range(-(-want // len(pool)))])[:want] if want else []
            batches += [list(map(int, order[i : i + self.batch_size])) for i in range(0, len(order), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def _mine(self) -> List[List[int]]:
        batches = self._batches()
        if self.num_replicas == 1:
            return batches
        usable = len(batches) - len(batches) % self.num_replicas
        return batches[self.rank : usable : self.num_replicas]

    def __iter__(self) -> Iterator[List[int]]:
        yield from self._mine()

    def __len__(self) -> int:
        return len(self._mine())


class _Base(L.LightningDataModule):
    def __init__(self, root, config: PPLLaVAConfig, tokenizer=None, *, batch_size: int = 8, template: str = "vicuna_v1",
                 reader: str = "decord", sampling: str = "uniform", num_workers: int = 0, skip_bad: bool = False,
                 max_length: Optional[int] = None, seed: int = 0, tasks: Optional[Sequence[str]] = None, cache_mb: float = 0,
                 video_features=None):
        super().__init__()
        if tokenizer is None:
            from ppllava.data.tokenizer import build_world_tokenizer

            tokenizer = build_world_tokenizer()
        self.root, self.config, self.tokenizer = Path(root), config, tokenizer
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.dataset_kwargs = dict(template=template, reader=reader, sampling=sampling, skip_bad=skip_bad,
                                   max_length=max_length, seed=seed, tasks=tasks, cache_mb=cache_mb,
                                   video_features=video_features)  # a VideoFeatureStore, or None
        self.datasets: Dict[str, object] = {}

    def _replicas(self):
        """(world size, rank) of the attached trainer, for sharding the batch plan under DDP."""
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset, sampler, collate) -> DataLoader:
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)


class SFTDataModule(_Base):
    """Interleaved SFT on `{split}.json`; `mix` weights media types in training batches."""

    def __init__(self, root, config, tokenizer=None, *, mix: Optional[Dict[str, float]] = None, oracle: bool = False,
                 **kwargs):
        super().__init__(root, config, tokenizer, **kwargs)
        self.mix, self.oracle = mix, oracle  # oracle: pool videos by the world's object masks

    def setup(self, stage: Optional[str] = None) -> None:
        for split in ("train", "val", "test"):
            path = self.root / f"{split}.json"
            if path.exists() and split not in self.datasets:
                self.datasets[split] = LLaVADataset(path, self.config, self.tokenizer, **self.dataset_kwargs)

    def _split(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise FileNotFoundError(f"{self.root / f'{split}.json'}: no {split} split")
        ds = self.datasets[split]
        sampler = MediaBatchSampler(ds.kinds, self.batch_size, self.mix if shuffle else None, shuffle, self.seed,
                                    *self._replicas())
        return self._loader(ds, sampler, Collator(self.config, self.tokenizer.pad_token_id, oracle=self.oracle))

    def train_dataloader(self):
        return self._split("train", True)

    def val_dataloader(self):
        return self._split("val", False)

    def test_dataloader(self):
        return self._split("test", False)


class DPODataModule(_Base):
    """Preference pairs from `{split}_dpo.jsonl`; `train_pairs` replaces the training file (on-policy
    pairs written elsewhere; their media paths stay relative to `root`)."""

    def __init__(self, root, config, tokenizer=None, *, train_pairs: Optional[Path] = None, **kwargs):
        super().__init__(root, config, tokenizer, **kwargs)
        self.train_pairs = train_pairs

    def setup(self, stage: Optional[str] = None) -> None:
        for split in ("train", "val", "test"):
            path = self.root / f"{split}_dpo.jsonl"
            if split == "train" and self.train_pairs is not None:
                path = Path(self.train_pairs)
            if path.exists() and split not in self.datasets:
                self.datasets[split] = PreferenceDataset(path, self.config, self.tokenizer, media_root=self.root,
                                                         **self.dataset_kwargs)

    def _split(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.datasets[split]
        sampler = MediaBatchSampler(ds.base.kinds, self.batch_size, None, shuffle, self.seed, *self._replicas())
        return self._loader(ds, sampler, PreferenceCollator(Collator(self.config, self.tokenizer.pad_token_id)))

    def train_dataloader(self):
        return self._split("train", True)

    def val_dataloader(self):
        return self._split("val", False)


class ClipPairsDataModule(L.LightningDataModule):
    """CLIP post-pretraining pairs from `{split}.json` records that name a target."""

    def __init__(self, root, config: PPLLaVAConfig, *, batch_size: int = 128, reader: str = "decord", num_workers: int = 0,
                 filler: Sequence[int] = (0, 0), seed: int = 0, partial: float = 0.0, questions: float = 0.0,
                 positions: float = 0.0):
        super().__init__()
        # Training prompts only; validation names every object in full.
        self.partial, self.questions, self.positions = partial, questions, positions
        self.root, self.config, self.batch_size, self.reader, self.num_workers = Path(root), config, batch_size, reader, num_workers
        self.filler, self.seed = tuple(filler), seed
        self.datasets: Dict[str, ClipPairDataset] = {}

    def setup(self, stage: Optional[str] = None) -> None:
        for split in ("train", "val", "test"):
            path = self.root / f"{split}.json"
            if path.exists() and split not in self.datasets:
                self.datasets[split] = ClipPairDataset(path, self.config.image_size, self.config.patch_size, reader=self.reader)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=ClipPairCollator(self.config.text_context_length, filler=self.filler,
                                                      seed=self.seed + (0 if shuffle else 1),
                                                      partial=self.partial if shuffle else 0.0,
                                                      questions=self.questions if shuffle else 0.0,
                                                      positions=self.positions if shuffle else 0.0), drop_last=shuffle)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)


def _by_reason(counts: Dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))


class SkipReport(L.Callback):
    """Reports the records skipped (skip_bad=True), counted by reason: those dropped when the datasets
    were built once, when training starts (logged as data/skipped_at_build), and those skipped while
    loading at the end of each training and validation epoch (data/skipped, data/val_skipped)."""

    def __init__(self):
        self.skips: Dict[str, List[tuple]] = {"train": [], "val": []}  # (reason, message) per stage
        self.at_build: Dict[str, int] = {}

    @staticmethod
    def _datasets(trainer) -> Dict[str, object]:
        datasets = getattr(getattr(trainer, "datamodule", None), "datasets", None)
        if datasets is None:  # dataloaders given to fit() directly
            datasets = {"train": getattr(getattr(trainer, "train_dataloader", None), "dataset", None)}
        return {split: ds for split, ds in datasets.items() if hasattr(ds, "skipped_at_build")}

    def on_train_start(self, trainer, pl_module) -> None:
        for split, ds in sorted(self._datasets(trainer).items()):
            counts = ds.skipped_at_build()
            if counts:
                print(f"[ppllava] {split}: skipped {sum(counts.values())} bad records when building the dataset "
                      f"({_by_reason(counts)}); first: {ds.invalid[0]}")
                self.at_build = dict(Counter(self.at_build) + Counter(counts))

    def _collect(self, stage: str, batch) -> None:
        skipped = list(batch.get("skipped", []))
        reasons = list(batch.get("skip_reasons", []))
        reasons += ["unknown"] * (len(skipped) - len(reasons))  # a batch from a collator that gives none
        self.skips[stage] += list(zip(reasons, skipped))

    def _report(self, stage: str, trainer, pl_module, name: str) -> None:
        skips, self.skips[stage] = self.skips[stage], []
        if skips:
            counts = Counter(reason for reason, _ in skips)
            where = f"epoch {trainer.current_epoch}" + ("" if stage == "train" else f" ({stage})")
            print(f"[ppllava] {where}: skipped {len(skips)} bad samples ({_by_reason(counts)}); first: {skips[0][1]}")
            pl_module.log(name, float(len(skips)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._collect("train", batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect("val", batch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._report("train", trainer, pl_module, "data/skipped")
        if self.at_build:  # once, with the first epoch's numbers
            pl_module.log("data/skipped_at_build", float(sum(self.at_build.values())))
            self.at_build = {}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._report("val", trainer, pl_module, "data/val_skipped")
