"""A few bf16 training steps of every stage at the `paper` shape, reduced in depth only (GPU).

    python benchmarks/paper_bf16_steps.py                   # 2 layers per tower and LLM
    python benchmarks/paper_bf16_steps.py --layers 4 --steps 4
    python benchmarks/paper_bf16_steps.py --preset tiny --device cpu   # a dry run of the script itself

Each stage runs from its `configs/paper/*.yaml` (lr, beta, gradient checkpointing, template
lengths) through the kit's own Trainer (`build_trainer`, precision `bf16-mixed`), on
synthetic batches of the published shapes: 336 px frames in 14 px patches (24 x 24 grid),
32 frames pooled by prompt-guided (2, 3, 3) windows (1,024 video tokens), 248-token CLIP
prompts, the 4096-wide Vicuna-7B layer. Widths, heads, vocabulary and token layout are the
paper's; only the number of layers is cut so that it fits a few minutes on one GPU.

Printed per stage: the loss of each step (all must be finite), seconds per step, peak GPU
memory; and the first step's loss under bf16 autocast vs fp32 on the same batch. Exits
non-zero if a loss is not finite or the bf16 loss strays from fp32 by more than 2 %.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from lightning.pytorch.utilities import move_data_to_device

from ppllava.config import PPLLaVAConfig
from ppllava.model import PPLLaVA
from ppllava.model.hf_configs import CLIP_BOS, CLIP_EOS
from ppllava.train.config import TrainConfig
from ppllava.train.modules import MODULES, add_lora
from ppllava.train.run import build_trainer

ROOT = Path(__file__).resolve().parent.parent


def clip_prompts(n: int, length: int, g: torch.Generator) -> torch.Tensor:
    ids = torch.randint(1, CLIP_BOS, (n, length), generator=g)
    ids[:, 0], ids[:, -1] = CLIP_BOS, CLIP_EOS
    return ids


def words(n: int, config: PPLLaVAConfig, g: torch.Generator) -> torch.Tensor:
    first = max(config.image_token_id, config.video_token_id) + 1 if config.image_token_id < 10 else 5
    return torch.randint(first, min(32000, config.llm_vocab_size), (n,), generator=g)


def sft_batch(model: PPLLaVA, n: int, g: torch.Generator, answer_len: int = 32) -> dict:
    """n samples of one video (32 frames at the paper shape), a full-length CLIP prompt and a
    Vicuna-length dialogue."""
    cfg = model.config
    rows = []
    for _ in range(n):
        question = words(200, cfg, g).tolist()
        answer = words(answer_len, cfg, g).tolist()
        ids = model.expand_placeholders([cfg.bos_token_id, cfg.video_token_id, *question, *answer, cfg.eos_token_id],
                                        video_frames=[cfg.num_frames])
        rows.append((ids, len(ids) - answer_len - 1))
    input_ids = torch.tensor([ids for ids, _ in rows])
    labels = input_ids.clone()
    for i, (_, start) in enumerate(rows):
        labels[i, :start] = -100
    size = model.vision_config.image_size
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels,
                clip_input_ids=clip_prompts(n, cfg.clip_extended_context, g),
                pixel_values_videos=torch.randn(n, cfg.num_frames, 3, size, size, generator=g))


def clip_batch(model: PPLLaVA, n: int, g: torch.Generator) -> dict:
    size = model.vision_config.image_size
    return dict(pixel_values=torch.randn(n, 3, size, size, generator=g),
                clip_input_ids=clip_prompts(n, model.config.clip_extended_context, g),
                positives=torch.eye(n, dtype=torch.bool), names=[f"thing {i}" for i in range(n)])


def batches(stage: str, model: PPLLaVA, steps: int, g: torch.Generator) -> list:
    if stage == "clip":
        return [clip_batch(model, 8, g) for _ in range(steps)]
    if stage == "dpo":
        out = []
        for _ in range(steps):
            chosen = sft_batch(model, 1, g)
            rejected = {**chosen, "input_ids": chosen["input_ids"].clone(), "labels": chosen["labels"].clone()}
            answer = rejected["labels"] != -100
            fresh = words(int(answer.sum()), model.config, g)
            rejected["input_ids"][answer] = fresh
            rejected["labels"][answer] = fresh
            out.append({"chosen": chosen, "rejected": rejected})
        return out
    return [sft_batch(model, 1, g) for _ in range(steps)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepLog(L.Callback):
    def __init__(self):
        self.losses, self.times, self._start = [], [], 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        sync()
        self.times.append(time.perf_counter() - self._start)
        self.losses.append(float(outputs["loss"]))


def first_loss(module, batch, device: str, dtype) -> float:
    """The stage's loss on one batch with autocast to `dtype` (None: plain fp32)."""
    module.log = lambda *a, **k: None  # outside a Trainer: nothing to log to
    with torch.no_grad(), torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        return float(module._step(move_data_to_device(batch, device), "train"))


def run_stage(name: str, stage: str, preset: str, device: str, layers: int, steps: int, lora: int,
              g: torch.Generator) -> bool:
    train = TrainConfig.from_yaml(ROOT / "configs" / "paper" / f"{stage}.yaml")
    # The model is built here from random weights; DPO's config only insists that it names one.
    overrides = dict(run_dir=tempfile.mkdtemp(), init_from="random" if stage == "dpo" else None, strategy="auto", devices=1,
                     accelerator="gpu" if device == "cuda" else "cpu",
                     precision="bf16-mixed" if device == "cuda" else "32-true", max_steps=steps, limit_val_batches=0, accumulate_grad_batches=1,
                     lora_rank=lora, warmup_ratio=0.0)
    train = TrainConfig(**{**train.__dict__, **overrides})
    config = PPLLaVAConfig.from_name(preset, **{**train.model, "vision_layers": layers, "text_layers": layers,
                                                  "llm_layers": layers})
    torch.manual_seed(0)
    with torch.device(device):
        model = PPLLaVA(config)
    if lora:
        add_lora(model, lora)
    module = MODULES[stage](model, train)
    data = batches(stage, model, steps, g)
    probe = MODULES[stage](copy.deepcopy(model), train)  # logging stubbed out: a copy, not the trained module
    loss32, loss16 = first_loss(probe, data[0], device, None), first_loss(probe, data[0], device, torch.bfloat16)
    del probe
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    log = StepLog()
    trainer = build_trainer(train, Path(train.run_dir), callbacks=[log])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    finite = bool(torch.isfinite(torch.tensor(log.losses)).all()) and len(log.losses) == steps
    close = abs(loss16 - loss32) <= 0.02 * abs(loss32) + 1e-3
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    print(f"[{'ok' if finite and close else 'FAIL'}] {name}: {layers} layers, trainable {trainable / 1e6:.2f} M, "
          f"lr {train.lr:g}, losses {[round(x, 4) for x in log.losses]}, "
          f"s/step {[round(t, 2) for t in log.times]}, peak {peak:.1f} GiB, "
          f"first-batch loss fp32 {loss32:.4f} vs bf16 {loss16:.4f}", flush=True)
    del trainer, module, model
    if device == "cuda":
        torch.cuda.empty_cache()
    return finite and close


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--preset", default="paper", choices=("tiny", "small", "paper"))
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this check runs on a GPU (the CPU checks the paper shape on the meta device)")
        return 1
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"{device_name}, torch {torch.__version__}, lightning {L.__version__}, preset {args.preset}", flush=True)
    g = torch.Generator().manual_seed(0)
    ok = [run_stage(name, stage, args.preset, args.device, args.layers, args.steps, lora, g)
          for name, stage, lora in (("clip (fine-grained)", "clip", 0), ("sft1", "sft1", 0), ("sft2", "sft2", 0),
                                    ("sft2 LoRA r16", "sft2", 16), ("dpo", "dpo", 0))]
    print("all stages passed" if all(ok) else "SOME STAGES FAILED")
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
