"""Run one training stage from a TrainConfig: the model, its data, Lightning's Trainer.

    python -m ppllava.train configs/tiny/sft2.yaml --set lr=5e-4 max_steps=200
    python -m ppllava.train configs/tiny/sft2.yaml --resume      # from run_dir/checkpoints/last.ckpt

The run directory gets train_config.yaml (what it ran with), logs/ (CSV), checkpoints/last.ckpt,
model/ (the kit checkpoint the next stage starts from), metrics.json (what it computed: the same for
two runs of one config and seed) and timing.json (wall time, tokens per second).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from ppllava.data.tasks import TEXT_TASKS
from ppllava.data.tokenizer import build_world_tokenizer
from ppllava.data.datamodules import ClipPairsDataModule, DPODataModule, SFTDataModule, SkipReport
from ppllava.data.video_features import VideoFeatureStore
from ppllava.model import PPLLaVA, load_pretrained
from ppllava.train.config import TrainConfig
from ppllava.train.modules import MODULES, add_lora
from ppllava.train.on_policy import on_policy_pairs
from ppllava.progress import PROGRESS_ENV
from ppllava.train.progress import ProgressFile
from ppllava.validation import parse_overrides


TIMING_METRICS = ("wall_seconds", "train/tokens_per_s")


def build_model(cfg: TrainConfig) -> PPLLaVA:
    if cfg.init_from is not None:
        return load_pretrained(cfg.init_from, **cfg.model)
    return PPLLaVA(cfg.model_config())  # the preset with the `model` overrides


def build_data(cfg: TrainConfig, model: PPLLaVA, train_pairs: Optional[Path] = None):
    config = model.config
    common = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, seed=cfg.seed, cache_mb=cfg.media_cache_mb)
    if cfg.video_feature_store:  # the model's tower, frozen by its stage's module: built before the data
        if cfg.num_workers:  # the store runs the tower where the dataset loads: one process, the model's own
            raise ValueError(f"TrainConfig.video_feature_store runs the vision tower in the loading process: set "
                             f"num_workers to 0, got {cfg.num_workers}")
        common["video_features"] = VideoFeatureStore(Path(cfg.data) / "features", model)
    if cfg.stage == "clip":
        return ClipPairsDataModule(cfg.data, config, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                   filler=cfg.clip_filler, seed=cfg.seed, partial=cfg.clip_partial,
                                   questions=cfg.clip_questions, positions=cfg.clip_positions)
    if cfg.stage == "lm":  # text-only records: the in-context lookups a pretrained LLM brings
        return SFTDataModule(cfg.data, config, template=cfg.template, tasks=TEXT_TASKS, mix=None, **common)
    if cfg.stage == "sft1":  # projector alignment on captions, LLaVA's plain template
        return SFTDataModule(cfg.data, config, template="plain", tasks=("caption",), mix=None, **common)  # as found
    if cfg.stage == "sft2":
        return SFTDataModule(cfg.data, config, template=cfg.template, mix=cfg.mix, oracle=cfg.relevance == "oracle",
                             **common)
    return DPODataModule(cfg.data, config, template=cfg.template, train_pairs=train_pairs, **common)


def checked_checkpoint(path: Path) -> Path:
    """A Lightning checkpoint that can be read whole; a file cut short gives a clear error."""
    try:
        torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err}); it may have been cut short "
                         "while writing. Delete it to start over, or resume from another checkpoint.") from err
    return path


def build_trainer(cfg: TrainConfig, run_dir: Path, callbacks: Optional[List[L.Callback]] = None) -> L.Trainer:
    on_gpu = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    precision = cfg.precision if cfg.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true")
    # Batches hold one media type, so some parameters sit out a step (image_newline in a video
    # batch): DDP must be told, or it waits forever for their gradients.
    strategy = "ddp_find_unused_parameters_true" if cfg.strategy == "ddp" else cfg.strategy
    progress_file = os.environ.get(PROGRESS_ENV)
    if progress_file:
        # Run by the main job: its cell bar shows this file, and Lightning's bar would only flood the
        # executed notebook's output.
        progress = [ProgressFile(progress_file, run_dir.name)]
    else:
        # A bar redrawn every 20 steps, not Rich's live display: in a notebook kernel each redraw is an
        # IOPub message, and a 20-minute training cell's backlog outlived nbclient's IOPub timeout.
        progress = [TQDMProgressBar(refresh_rate=20)]
    return L.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, strategy=strategy, precision=precision,
        max_steps=cfg.max_steps, max_epochs=-1 if cfg.max_steps > 0 else cfg.max_epochs,  # max_steps, when set, rules
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.gradient_clip_val, check_val_every_n_epoch=cfg.val_every_n_epochs,
        limit_val_batches=cfg.limit_val_batches, default_root_dir=run_dir, log_every_n_steps=1,
        # Each run, and each resume, logs to its own logs/version_N: a resume never overwrites the earlier logs.
        logger=CSVLogger(run_dir, name="logs"), deterministic=not on_gpu,
        use_distributed_sampler=False,  # the media batch sampler shards itself across processes
        enable_progress_bar=not progress_file,
        callbacks=[ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0), SkipReport(),
                   *progress, *(callbacks or [])],
    )


def run(cfg: TrainConfig, resume: bool = False, callbacks: Optional[List[L.Callback]] = None) -> Dict[str, object]:
    """Train one stage; returns the final metrics (also in run_dir/metrics.json)."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    model = build_model(cfg)
    if cfg.lora_rank > 0 and cfg.stage in ("sft2", "dpo"):
        add_lora(model, cfg.lora_rank)
    train_pairs = None
    if cfg.stage == "dpo" and cfg.dpo_pairs != "world":
        # The starting model's own mistakes, before any DPO step; a resumed run keeps the first start's pairs.
        train_pairs = run_dir / "train_dpo_on_policy.jsonl"
        if not train_pairs.exists():
            # The answers are kept under the world (<data>/answers, keyed by the model and the file): the
            # recipe's DPO and its controls start from one model and generate once.
            counts = on_policy_pairs(model, Path(cfg.data) / "train_dpo.jsonl", build_world_tokenizer(), train_pairs,
                                     correct=cfg.dpo_pairs == "on_policy_corrected", cache=Path(cfg.data) / "answers")
            (run_dir / "on_policy_counts.json").write_text(json.dumps(counts, indent=2))
    module = MODULES[cfg.stage](model, cfg)
    data = build_data(cfg, model, train_pairs)
    trainer = build_trainer(cfg, run_dir, callbacks)
    if trainer.is_global_zero:
        cfg.to_yaml(run_dir / "train_config.yaml")
        model.config.to_yaml(run_dir / "model_config.yaml")
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = checked_checkpoint(last) if resume and last.exists() else None
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics.update(wall_seconds=time.perf_counter() - start, steps=trainer.global_step)
    if trainer.is_global_zero:
        if cfg.lora_rank > 0 and cfg.stage in ("sft2", "dpo"):
            model.language_model = model.language_model.merge_and_unload()  # the kit format holds plain weights
        model.save_pretrained(run_dir / "model")
        # metrics.json holds what the run computed, identical for two runs of one config and seed;
        # how long it took (wall time, tokens per second) goes to timing.json.
        timing = {k: v for k, v in metrics.items() if k in TIMING_METRICS}
        computed = {k: v for k, v in metrics.items() if k not in TIMING_METRICS}
        (run_dir / "metrics.json").write_text(json.dumps(computed, indent=2))
        (run_dir / "timing.json").write_text(json.dumps(timing, indent=2))
    return metrics


def read_logs(run_dir: Union[str, Path]) -> List[Dict[str, float]]:
    """Every row the CSV logger wrote for a run (all its versions, resumes included, in order),
    with empty cells left out: [{"epoch": 0.0, "step": 12.0, "train/loss": 2.3, ...}, ...]."""
    files = sorted(Path(run_dir).glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no logs/version_*/metrics.csv (has the stage run?)")
    rows = []
    for path in files:
        with path.open(newline="") as handle:
            rows += [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="a stage config, e.g. configs/tiny/sft2.yaml")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="overrides, values in YAML syntax")
    parser.add_argument("--resume", action="store_true", help="continue from run_dir/checkpoints/last.ckpt")
    args = parser.parse_args(argv)
    overrides = parse_overrides(parser, args.set)
    try:  # only the checks before any work become usage errors (exit 2); the run's own errors stay tracebacks
        cfg = TrainConfig.from_yaml(args.config, **overrides)
        cfg.model_config()  # the model's config too, init_from's included
    except (ValueError, OSError) as err:
        parser.error(str(err))
    metrics = run(cfg, resume=args.resume)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
