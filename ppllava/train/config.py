"""One training config per stage run, plain and serializable like the model's; YAML files in
`configs/<preset>/<stage>.yaml` hold commented values."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from ppllava.train.losses import DPO_LOSSES

STAGES = ("clip", "lm", "sft1", "sft2", "dpo")
DPO_PAIRS = ("world", "on_policy", "on_policy_corrected")


@dataclass
class TrainConfig:
    stage: str = "sft2"  # clip | lm (text-only LLM pretraining) | sft1 (projector alignment) | sft2 (interleaved SFT) | dpo
    preset: str = "tiny"  # PPLLaVAConfig preset of the model
    model: Dict[str, Any] = field(default_factory=dict)  # PPLLaVAConfig overrides
    data: str = "data/tiny"  # a written world (or LLaVA-format data in the same layout)
    run_dir: str = "runs/train"  # checkpoints, logs, the config it ran with, the final model
    init_from: Optional[str] = None  # a kit checkpoint directory (the previous stage's model/)

    # --- optimisation ---------------------------------------------------------------------
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05  # linear warm-up share of the steps, then cosine to zero
    max_steps: int = -1  # -1: run max_epochs; otherwise exactly this many steps, however many epochs
    max_epochs: int = 1
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0
    gradient_checkpointing: bool = False
    seed: int = 0

    # --- hardware (Lightning's own strategies; nothing home-made) ----------------------------
    accelerator: str = "auto"
    devices: Union[int, str] = 1
    strategy: str = "auto"  # auto | ddp | fsdp | deepspeed_stage_2 | deepspeed_stage_3 ...
    precision: str = "auto"  # auto: 32-true on CPU, bf16-mixed on GPU
    num_workers: int = 0
    media_cache_mb: float = 0  # decoded media kept in memory after the first epoch (per loading process)

    # --- stage switches -------------------------------------------------------------------
    mix: Dict[str, float] = field(default_factory=lambda: {"video": 0.5, "image": 0.3, "multi": 0.2})
    template: str = "vicuna_v1"
    clip_loss: str = "fine_grained"  # fine_grained (the paper) | global (the ablation)
    clip_filler: List[int] = field(default_factory=lambda: [0, 0])  # clip: words of dialogue before each name (lo, hi)
    relevance: str = "model"  # sft2: model (CLIP's map) | oracle (the world's object masks; needs boxes in the records)
    clip_partial: float = 0.0  # clip: share of prompts naming only the shape or only the colour, as questions do
    clip_questions: float = 0.0  # clip: share of prompts that are the record's own question (the SFT-time CLIP prompt)
    lora_rank: int = 0  # stage 2 / DPO: 0 trains the LLM itself, > 0 trains LoRA adapters (peft)
    dpo_loss: str = "sigmoid"  # sigmoid | hinge | ipo
    beta: float = 0.1
    # dpo: world (the world's rejected answers) | on_policy (the SFT model's own mistakes rejected) |
    # on_policy_corrected (and, against a caption stating something false, it without the false clauses)
    dpo_pairs: str = "world"
    alpha: float = 1.0
    gamma: float = 0.0
    val_every_n_epochs: int = 1
    limit_val_batches: Union[int, float] = 1.0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"TrainConfig.stage must be one of {STAGES}, got {self.stage!r}")
        if self.clip_loss not in ("fine_grained", "global"):
            raise ValueError(f"TrainConfig.clip_loss must be 'fine_grained' or 'global', got {self.clip_loss!r}")
        if self.dpo_pairs not in DPO_PAIRS:
            raise ValueError(f"TrainConfig.dpo_pairs must be one of {DPO_PAIRS}, got {self.dpo_pairs!r}")
        if self.dpo_loss not in DPO_LOSSES:
            raise ValueError(f"TrainConfig.dpo_loss must be one of {DPO_LOSSES}, got {self.dpo_loss!r}")
        for name in ("batch_size", "max_epochs", "accumulate_grad_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"TrainConfig.lr must be > 0 and warmup_ratio in [0, 1); got {self.lr}, {self.warmup_ratio}")
        if not self.media_cache_mb >= 0:
            raise ValueError(f"TrainConfig.media_cache_mb must be >= 0, got {self.media_cache_mb}")
        if self.relevance not in ("model", "oracle"):
            raise ValueError(f"TrainConfig.relevance must be 'model' or 'oracle', got {self.relevance!r}")
        if not 0 <= self.clip_questions <= 1:
            raise ValueError(f"TrainConfig.clip_questions must be in [0, 1], got {self.clip_questions}")
        if not 0 <= self.clip_partial <= 1:
            raise ValueError(f"TrainConfig.clip_partial must be in [0, 1], got {self.clip_partial}")
        if len(self.clip_filler) != 2 or not 0 <= self.clip_filler[0] <= self.clip_filler[1]:
            raise ValueError(f"TrainConfig.clip_filler must be [lo, hi] with 0 <= lo <= hi, got {self.clip_filler}")
        if self.stage == "dpo" and self.init_from is None:
            raise ValueError("TrainConfig.init_from is required for dpo (the SFT model to start from)")

    def to_yaml(self, path: Union[str, Path, None] = None) -> str:
        text = yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path: Union[str, Path], **overrides: Any) -> "TrainConfig":
        data = yaml.safe_load(Path(path).read_text()) or {}
        unknown = (set(data) | set(overrides)) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown TrainConfig fields {sorted(unknown)}")
        return cls(**{**data, **overrides})
