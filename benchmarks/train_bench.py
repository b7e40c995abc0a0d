"""SFT steps with and without the frozen vision tower's feature cache, side by side in one run.

    python benchmarks/train_bench.py                                   # the tiny preset
    python benchmarks/train_bench.py --model patch_size=8 vision_width=128 vision_layers=4 \
        video_kernel=[2,4,4] image_kernel=[1,4,4]                      # a larger tower
    python benchmarks/train_bench.py --needle 256 --steps 8           # notebook 07's long videos

Stage 2's trainable parts (projector and LLM), AdamW, the same batches of a small world (decoded
beforehand, so decoding is not timed) for two epochs: the first fills the cache, the second reads it.
Both settings start from the same weights and must end on the same ones (checked). Prints the time per
step of each epoch and the ratio, as JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ppllava.data.dataset import model_inputs
from ppllava.data.datamodules import SFTDataModule
from ppllava.data.tokenizer import build_world_tokenizer
from ppllava.data.world import WorldSpec, write_needle_world, write_world
from ppllava.model import PPLLaVA
from ppllava.model.feature_cache import FrozenFeatureCache
from ppllava.train.config import TrainConfig
from ppllava.train.modules import trainable_parts
from ppllava.validation import parse_overrides


def epoch_ms(model: PPLLaVA, batches, optimizer) -> float:
    """Median milliseconds per training step over one pass of `batches`."""
    times = []
    for batch in batches:
        start = time.perf_counter()
        loss = model(**model_inputs(batch)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="*", default=[], help="PPLLaVAConfig overrides, key=value")
    parser.add_argument("--steps", type=int, default=30, help="batches per epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--needle", type=int, default=0, metavar="FRAMES",
                        help="needle videos of this many frames instead of the short-clip mix, pooled as notebook 07 "
                             "pools them (16 tokens: prompt pooling to (4, 2, 2))")
    args = parser.parse_args(argv)
    model = parse_overrides(parser, args.model, "--model")
    if args.needle:
        model = {"num_frames": args.needle, "pooling": "prompt", "video_output_size": [4, 2, 2], **model}
    cfg = TrainConfig(stage="sft2", preset="tiny", model=model)
    torch.manual_seed(0)
    start = PPLLaVA(cfg.model_config())
    with tempfile.TemporaryDirectory() as world:
        if args.needle:
            write_needle_world(Path(world), args.needle, WorldSpec(), train=args.steps * args.batch_size, val=8, test=0,
                               progress=False)
            mix = {"video": 1.0}
        else:
            write_world(Path(world), WorldSpec(), train=args.steps * args.batch_size, val=8, test=0, long_per_length=0,
                        progress=False)
            mix = {"video": 0.4, "image": 0.25, "multi": 0.15, "text": 0.2}
        data = SFTDataModule(world, start.config, build_world_tokenizer(), batch_size=args.batch_size, mix=mix)
        data.setup()
        batches = list(data.train_dataloader())[: args.steps]
    result = {"model": cfg.model, "needle_frames": args.needle, "steps": len(batches), "batch_size": args.batch_size, "torch_threads": torch.get_num_threads()}
    trained = {}
    for setting in ("plain", "cached"):
        model = copy.deepcopy(start)
        trainable_parts(model, "sft2", lora=False)
        if setting == "cached":
            model.feature_cache = FrozenFeatureCache(max_mb=4096)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        result[setting] = {"epoch_1_ms_per_step": round(epoch_ms(model, batches, optimizer), 1),
                           "epoch_2_ms_per_step": round(epoch_ms(model, batches, optimizer), 1)}
        trained[setting] = model.state_dict()
    result["same_weights"] = all(torch.equal(trained["plain"][k], trained["cached"][k]) for k in trained["plain"])
    for epoch in (1, 2):
        key = f"epoch_{epoch}_ms_per_step"
        result[f"epoch_{epoch}_speedup"] = round(result["plain"][key] / result["cached"][key], 2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
