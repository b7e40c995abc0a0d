"""One training config per stage run, plain and serializable like the model's; YAML files in
`configs/<preset>/<stage>.yaml` hold commented values."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from ppllava.config import PRESETS, PPLLaVAConfig
from ppllava.data.conversation import TEMPLATES
from ppllava.train.losses import DPO_LOGPS, DPO_LOSSES
from ppllava.validation import check_fields, read_yaml_mapping

STAGES = ("clip", "lm", "sft1", "sft2", "dpo")
DPO_PAIRS = ("world", "on_policy", "on_policy_corrected")
MEDIA_KINDS = ("video", "image", "multi", "text")


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
    devices: Union[int, str, List[int]] = 1  # a count, "auto", or device indices [0, 1]
    strategy: str = "auto"  # auto | ddp | fsdp | deepspeed_stage_2 | deepspeed_stage_3 ...
    precision: str = "auto"  # auto: 32-true on CPU, bf16-mixed on GPU
    num_workers: int = 0
    media_cache_mb: float = 0  # decoded media kept in memory after the first epoch (per loading process)
    # sft1, sft2, dpo: the frozen vision tower's features of frames already seen (ppllava.model.feature_cache);
    # the same weights come out, faster
    vision_cache_mb: float = 0
    # sft1, sft2: each video's frozen-tower features computed once into <data>/features and read in place of
    # its pixels, by every epoch and every run on that world with the same tower (ppllava.data.video_features)
    video_feature_store: bool = False

    # --- stage switches -------------------------------------------------------------------
    mix: Dict[str, float] = field(default_factory=lambda: {"video": 0.5, "image": 0.3, "multi": 0.2})
    template: str = "vicuna_v1"
    clip_loss: str = "fine_grained"  # fine_grained (the paper) | global (the ablation)
    clip_filler: List[int] = field(default_factory=lambda: [0, 0])  # clip: words of dialogue before each name (lo, hi)
    relevance: str = "model"  # sft2: model (CLIP's map) | oracle (the world's object masks; needs boxes in the records)
    clip_partial: float = 0.0  # clip: share of prompts naming only the shape or only the colour, as questions do
    clip_questions: float = 0.0  # clip: share of prompts that are the record's own question (the SFT-time CLIP prompt)
    clip_positions: float = 0.0  # clip: share of full-name prompts that say where the object is ("at the top left")
    # clip: weight of the grounding loss (losses.grounding_loss: the map's share on the named object's patches,
    # from the world's masks, which real CLIP never sees) added to the contrastive loss; 0 is the paper's stage
    clip_grounding: float = 0.0
    # clip: the text tower encodes each batch's prompts in this many groups by length (PPLLaVA.encode_prompts):
    # with a filler that spreads lengths over the context, 1 group spends most of its positions on padding
    clip_text_groups: int = 1
    lora_rank: int = 0  # stage 2 / DPO: 0 trains the LLM itself, > 0 trains LoRA adapters (peft)
    dpo_loss: str = "sigmoid"  # sigmoid | hinge | ipo
    beta: float = 0.1
    # sum: each answer's log-prob summed over its tokens (the DPO paper, and this kit's results) |
    # mean: averaged per answer token (TRL's convention for ipo; long answers weigh no more than short)
    dpo_logps: str = "sum"
    label_smoothing: float = 0.0  # sigmoid only: conservative DPO's share of flipped labels, in [0, 0.5)
    # dpo: world (the world's rejected answers) | on_policy (the SFT model's own mistakes rejected) |
    # on_policy_corrected (and, against a caption stating something false, it without the false clauses)
    dpo_pairs: str = "world"
    alpha: float = 1.0
    gamma: float = 0.0
    val_every_n_epochs: int = 1
    limit_val_batches: Union[int, float] = 1.0

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type against its annotation, naming the field and the value
        choices = {"stage": STAGES, "preset": tuple(PRESETS), "clip_loss": ("fine_grained", "global"),
                   "dpo_pairs": DPO_PAIRS, "dpo_loss": DPO_LOSSES, "dpo_logps": DPO_LOGPS,
                   "relevance": ("model", "oracle"), "template": tuple(TEMPLATES)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("batch_size", "max_epochs", "accumulate_grad_batches", "val_every_n_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_workers", "lora_rank", "weight_decay", "gradient_clip_val", "media_cache_mb", "vision_cache_mb",
                     "alpha", "gamma"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.stage == "clip" and self.vision_cache_mb > 0:
            raise ValueError(f"TrainConfig.vision_cache_mb = {self.vision_cache_mb} caches a frozen vision tower, but the "
                             "clip stage trains it: set it to 0 for clip")
        if self.video_feature_store and self.stage not in ("sft1", "sft2"):
            raise ValueError(f"TrainConfig.video_feature_store serves the frozen vision tower's features of SFT videos "
                             f"(stages sft1, sft2), not stage {self.stage!r}")
        if self.max_steps != -1 and self.max_steps < 1:
            raise ValueError(f"TrainConfig.max_steps must be -1 (run max_epochs) or >= 1, got {self.max_steps}")
        for name in ("lr", "beta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"TrainConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"TrainConfig.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.dpo_loss != "sigmoid":
            raise ValueError(f"TrainConfig.label_smoothing {self.label_smoothing} applies to dpo_loss 'sigmoid' only, "
                             f"got dpo_loss {self.dpo_loss!r}")
        for name in ("clip_questions", "clip_partial", "clip_positions"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"TrainConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.clip_grounding < 0:
            raise ValueError(f"TrainConfig.clip_grounding must be >= 0, got {self.clip_grounding}")
        if self.clip_grounding and self.clip_loss != "fine_grained":
            raise ValueError(f"TrainConfig.clip_grounding {self.clip_grounding} needs clip_loss 'fine_grained' (a patch "
                             f"map to ground), got {self.clip_loss!r}")
        if self.clip_text_groups < 1:
            raise ValueError(f"TrainConfig.clip_text_groups must be >= 1, got {self.clip_text_groups}")
        if len(self.clip_filler) != 2 or not 0 <= self.clip_filler[0] <= self.clip_filler[1]:
            raise ValueError(f"TrainConfig.clip_filler must be [lo, hi] with 0 <= lo <= hi, got {self.clip_filler}")
        if isinstance(self.limit_val_batches, float) and not 0 <= self.limit_val_batches <= 1 or self.limit_val_batches < 0:
            raise ValueError(f"TrainConfig.limit_val_batches must be a count >= 0 or a share in [0, 1], "
                             f"got {self.limit_val_batches}")
        for kind, share in self.mix.items():
            if kind not in MEDIA_KINDS or not share >= 0:
                raise ValueError(f"TrainConfig.mix[{kind!r}] must be a media kind of {MEDIA_KINDS} with a share >= 0, "
                                 f"got {share}")
        if not sum(self.mix.values()) > 0:
            raise ValueError(f"TrainConfig.mix needs a share > 0, got {self.mix}")
        unknown = set(self.model) - {f.name for f in dataclasses.fields(PPLLaVAConfig)}
        if unknown:
            raise ValueError(f"TrainConfig.model: unknown PPLLaVAConfig fields {sorted(unknown)}")
        if self.init_from is None:  # the model is the preset with these overrides: check it now, not after mkdir
            self.model_config()
        if self.stage == "dpo" and self.init_from is None:
            raise ValueError("TrainConfig.init_from is required for dpo (the SFT model to start from)")

    def model_config(self) -> PPLLaVAConfig:
        """The model's config: init_from's config.yaml (read from disk) or else the preset, with the
        `model` overrides; a fault is a ValueError naming TrainConfig.model or init_from."""
        if self.init_from is None:
            base = PPLLaVAConfig.from_name(self.preset).to_dict()
        else:
            path = Path(self.init_from) / "config.yaml"
            if not path.exists():
                raise ValueError(f"TrainConfig.init_from {self.init_from!r}: {path} is missing (not a ppllava checkpoint)")
            base = PPLLaVAConfig.from_yaml(path).to_dict()
        try:
            return PPLLaVAConfig.from_dict({**base, **self.model})
        except ValueError as err:
            raise ValueError(f"TrainConfig.model: {err}") from err

    def to_yaml(self, path: Union[str, Path, None] = None) -> str:
        text = yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path: Union[str, Path], **overrides: Any) -> "TrainConfig":
        """The config in YAML file `path` with `overrides`; any fault is a ValueError naming the file."""
        data = read_yaml_mapping(Path(path).read_text(), str(path), "TrainConfig")
        unknown = (set(data) | set(overrides)) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown TrainConfig fields {sorted(unknown)}")
        try:
            return cls(**{**data, **overrides})
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
