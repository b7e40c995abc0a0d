"""Thin LightningModules, one per stage: the maths lives in `ppllava.train.losses`."""
from __future__ import annotations

import copy
import time
from typing import Dict, List

import lightning as L
import torch
from transformers import get_cosine_schedule_with_warmup

from ppllava.data.dataset import model_inputs
from ppllava.evaluate import batch_pointing
from ppllava.model import PPLLaVA
from ppllava.model.feature_cache import FrozenFeatureCache
from ppllava.train.config import TrainConfig
from ppllava.train.losses import (
    contrastive_loss,
    dpo_loss,
    fine_grained_logits,
    grounding_loss,
    global_logits,
    sequence_logprobs,
    token_accuracy,
)

LOGIT_SCALE_MAX = 4.605170185988092  # log(100)
NO_DECAY = ("bias", "norm", "embedding", "logit_scale", "image_newline", "frozen", "trainable")


def trainable_parts(model: PPLLaVA, stage: str, lora: bool) -> None:
    """Freeze everything, then unfreeze what the stage trains."""
    model.requires_grad_(False)
    if stage == "clip":
        for part in (model.vision_tower, model.visual_layernorm, model.visual_projection, model.clip_text, model.text_projection):
            part.requires_grad_(True)
        model.clip_text.embeddings.position_embedding.requires_grad_(True)
        model.logit_scale.requires_grad_(True)  # CLIP learns its temperature; frozen in every later stage
    elif stage == "lm":  # the tiny LLM's language pretraining (a real LLM arrives with it): LLM only
        model.language_model.requires_grad_(True)
    elif stage == "sft1":  # projector alignment: towers and LLM frozen
        model.projector.requires_grad_(True)
        model.image_newline.requires_grad_(True)
    else:  # sft2 and dpo: projector and the LLM (or its LoRA adapters)
        model.projector.requires_grad_(True)
        model.image_newline.requires_grad_(True)
        if lora:
            for name, p in model.language_model.named_parameters():
                p.requires_grad_("lora_" in name)
        else:
            model.language_model.requires_grad_(True)


def add_lora(model: PPLLaVA, rank: int) -> None:
    """Wrap the LLM's attention and MLP projections with peft LoRA adapters."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model.language_model = get_peft_model(model.language_model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))


class _Stage(L.LightningModule):
    def __init__(self, model: PPLLaVA, train: TrainConfig):
        super().__init__()
        self.model, self.train_config = model, train
        trainable_parts(model, train.stage, train.lora_rank > 0)
        if train.gradient_checkpointing:
            model.gradient_checkpointing_enable()

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if any(k in name.lower() for k in NO_DECAY) or p.ndim < 2 else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.train_config.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        # fused on the CPU: one kernel for all parameters instead of a Python loop over them (torch's CPU
        # default); 300 steps of the tiny CLIP stage took 27.7 s against 33.1 s (2026-11-29). Not on a GPU:
        # Lightning's mixed-precision plugin refuses to clip the gradients of an optimizer that unscales them
        # itself, as fused AdamW does, and torch's CUDA default (foreach) is already one launch per group.
        fused = self.device.type == "cpu"
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.train_config.lr, fused=fused)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = get_cosine_schedule_with_warmup(optimizer, int(self.train_config.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def towers(self) -> List[PPLLaVA]:
        """The models whose frozen vision towers share one feature cache (all hold the same tower weights)."""
        return [self.model]

    def on_fit_start(self) -> None:
        if self.train_config.vision_cache_mb > 0:
            cache = FrozenFeatureCache(self.train_config.vision_cache_mb)
            for model in self.towers():
                model.feature_cache = cache

    def on_fit_end(self) -> None:
        cache = getattr(self.model, "feature_cache", None)
        if cache is not None:
            print(f"[ppllava] vision feature cache: {cache.hits} frames read, {cache.misses} computed, "
                  f"{cache.bytes / 2 ** 20:.0f} MiB", flush=True)
        for model in self.towers():
            model.feature_cache = None

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def _step(self, batch, stage: str):
        raise NotImplementedError


class ClipPretrainModule(_Stage):
    """Fine-grained (or global) CLIP post-pretraining; pointing accuracy on validation."""

    def _logits(self, batch, stage: str = "train"):
        """(logits (B, B), grounding loss or None): the grounding loss is computed when it trains, and on
        validation whenever there is a patch map (it says how much of the map lies on the named object)."""
        m = self.model
        text = m.encode_prompts(batch["clip_input_ids"], groups=self.train_config.clip_text_groups)
        if self.train_config.clip_loss == "global":
            image = m.visual_projection(m.vision_tower(pixel_values=batch["pixel_values"]).pooler_output)
            return global_logits(image, text, m.logit_scale), None
        patches = m._patch_embeds(m._patch_features(batch["pixel_values"]))  # (B, g*g, Dc)
        grounding, masks = None, batch["object_masks"].flatten(1)
        # a batch whose every prompt fits two objects (or whose targets show nowhere) has nothing to ground
        if (self.train_config.clip_grounding or stage == "val") and (batch["grounded"] & masks.any(1)).any():
            grounding = grounding_loss(patches, text, m.logit_scale, masks, batch["grounded"])
        return fine_grained_logits(patches, text, m.logit_scale), grounding

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        with torch.no_grad():  # as CLIP does: tau = exp(logit_scale) never above 100
            self.model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)

    def _step(self, batch, stage):
        logits, grounding = self._logits(batch, stage)
        loss = contrastive_loss(logits, batch["positives"])
        if grounding is not None:
            self.log(f"{stage}/grounding", grounding, batch_size=len(batch["names"]))
            loss = loss + self.train_config.clip_grounding * grounding
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=len(batch["names"]))
        if stage == "val":
            self.log("val/pointing", batch_pointing(self.model, batch), prog_bar=True, batch_size=len(batch["names"]))
        return loss


class SFTModule(_Stage):
    """Stage 1 (projector alignment) and stage 2 (interleaved SFT): next-token loss on answers."""

    def _step(self, batch, stage):
        if "input_ids" not in batch:  # every sample of this batch was a counted skip
            return None
        start = time.perf_counter()
        out = self.model(**model_inputs(batch))
        size = batch["input_ids"].shape[0]
        self.log(f"{stage}/loss", out.loss, prog_bar=True, batch_size=size)
        self.log(f"{stage}/token_accuracy", token_accuracy(out.logits.detach(), batch["labels"]), batch_size=size)
        if stage == "train":
            tokens = float(batch["attention_mask"].sum())
            self.log("train/tokens_per_s", tokens / max(time.perf_counter() - start, 1e-9), batch_size=size)
        return out.loss


class DPOModule(_Stage):
    """DPO from an SFT model against a frozen reference: a copy, or the LoRA adapters switched off."""

    def __init__(self, model: PPLLaVA, train: TrainConfig):
        super().__init__(model, train)
        self.reference = None if train.lora_rank > 0 else copy.deepcopy(model).requires_grad_(False).eval()

    def towers(self) -> List[PPLLaVA]:
        # The reference is a copy of the policy, whose tower DPO never trains: one cache serves both.
        return [self.model] + ([self.reference] if self.reference is not None else [])

    def _logps(self, model, batch) -> Dict[str, torch.Tensor]:
        out = model(**model_inputs(batch))
        # dpo_logps: "sum" over the answer's tokens, or "mean" per token (TRL's IPO convention)
        logp = sequence_logprobs(out.logits, batch["labels"], average=self.train_config.dpo_logps == "mean")
        return {"logp": logp, "loss": out.loss}

    def _reference(self, batch) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                return self._logps(self.reference, batch)["logp"]
            with self.model.language_model.disable_adapter():
                return self._logps(self.model, batch)["logp"]

    def _step(self, batch, stage):
        chosen, rejected = batch["chosen"], batch["rejected"]
        if "input_ids" not in chosen:
            return None
        policy_c, policy_r = self._logps(self.model, chosen), self._logps(self.model, rejected)
        cfg = self.train_config
        out = dpo_loss(policy_c["logp"], policy_r["logp"], self._reference(chosen), self._reference(rejected),
                       beta=cfg.beta, loss_type=cfg.dpo_loss, label_smoothing=cfg.label_smoothing,
                       sft_chosen=policy_c["loss"], alpha=cfg.alpha, gamma=cfg.gamma)
        size = chosen["input_ids"].shape[0]
        for key, value in out.items():
            self.log(f"{stage}/{key}", value, prog_bar=key in ("loss", "reward_accuracy"), batch_size=size)
        return out["loss"]


MODULES = {"clip": ClipPretrainModule, "lm": SFTModule, "sft1": SFTModule, "sft2": SFTModule, "dpo": DPOModule}
