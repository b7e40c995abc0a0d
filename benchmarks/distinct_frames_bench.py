"""A training step on needle videos with each distinct frame projected once (`distinct_frames`) against
every frame projected (the plain formulation), side by side in one run.

    python benchmarks/distinct_frames_bench.py                     # 16, 64 and 256 frames, batch 16
    python benchmarks/distinct_frames_bench.py --lengths 256 1024 --batch 8

A needle video holds still for runs of frames (its haystack moves rarely), so after a frozen tower's
features (`video_features`, what the feature store serves) the projector and CLIP's projection would
repeat the same work on every repeated frame. For each length: a needle world of `--batch` training
videos, the features of the batch, then the model's forward and backward (`prompt` pooling, the
invariant rule, 16 tokens a video) with `distinct_frames` on (the projector once per distinct frame,
the pooling from those rows: `pool_shared_tokens`) and switched off, alternating. Prints the median
milliseconds of each, the speed-up, the share of distinct frames, and how far the logits and the
projector's gradients are apart (float rounding: the sums run in another order), as JSON.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ppllava.config import PPLLaVAConfig
from ppllava.data.dataset import Collator, LLaVADataset, model_inputs
from ppllava.data.tokenizer import build_world_tokenizer
from ppllava.data.world import WorldSpec, write_needle_world
from ppllava.model import PPLLaVA
from ppllava.model import ppllava as core
from ppllava.train.modules import trainable_parts


def step(model: PPLLaVA, batch: dict) -> tuple:
    """One forward and backward: (seconds, logits, the projector's gradients)."""
    model.zero_grad()
    start = time.perf_counter()
    out = model(**batch)
    out.loss.backward()
    seconds = time.perf_counter() - start
    return seconds, out.logits.detach(), [p.grad.clone() for p in model.projector.parameters()]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256], help="frames per video")
    parser.add_argument("--batch", type=int, default=16, help="videos per step (the needle rows' batch_size)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    distinct_frames = core.distinct_frames
    plain = lambda patches, cells: None  # noqa: E731 - every frame projected
    out = {"batch": args.batch, "threads": torch.get_num_threads(), "ms": {}, "speedup": {}, "distinct_share": {},
           "logits_max_abs_diff": {}, "grad_max_abs_diff": {}}
    for frames in args.lengths:
        torch.manual_seed(0)
        config = PPLLaVAConfig.from_name("tiny", num_frames=frames, video_output_size=(4, 2, 2), weighting="invariant",
                                         pool_margin=6.0)  # notebook 07's rows: 16 tokens at every length
        model = PPLLaVA(config).train()
        trainable_parts(model, "sft2", lora=False)  # stage 2: projector and LLM; the towers frozen, features stored
        with tempfile.TemporaryDirectory() as tmp:
            write_needle_world(Path(tmp), frames, WorldSpec(), train=args.batch, val=1, test=0, progress=False)
            data = LLaVADataset(Path(tmp) / "train.json", config, build_world_tokenizer())
            batch = model_inputs(Collator(config, 0)([data[i] for i in range(args.batch)]))
        with torch.no_grad():
            batch["video_features"] = model.video_features(batch.pop("pixel_values_videos"))
        found = distinct_frames(batch["video_features"], model.patch_grid ** 2)
        out["distinct_share"][frames] = round((found[0].shape[0] if found else args.batch * frames) / (args.batch * frames), 3)
        times = {"distinct": [], "plain": []}
        results = {}
        for repeat in range(args.repeats + 1):  # the first of each: warm-up
            for name, finder in (("distinct", distinct_frames), ("plain", plain)):
                core.distinct_frames = finder
                try:
                    seconds, logits, grads = step(model, batch)
                finally:
                    core.distinct_frames = distinct_frames
                if repeat:
                    times[name].append(seconds)
                results[name] = (logits, grads)
        ms = {name: 1000 * float(np.median(t)) for name, t in times.items()}
        out["ms"][frames] = {name: round(v, 1) for name, v in ms.items()}
        out["speedup"][frames] = round(ms["plain"] / ms["distinct"], 2)
        out["logits_max_abs_diff"][frames] = float((results["distinct"][0] - results["plain"][0]).abs().max())
        out["grad_max_abs_diff"][frames] = max(float((a - b).abs().max())
                                               for a, b in zip(results["distinct"][1], results["plain"][1]))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
