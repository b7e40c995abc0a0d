"""The CLIP text tower's forward and backward on one batch of prompts whose lengths spread over the
context, encoded as one batch or in length groups (`PPLLaVA.encode_prompts(groups=)`,
`TrainConfig.clip_text_groups`), side by side in one run.

    python benchmarks/clip_text_bench.py                  # tiny preset, 128 prompts, filler 0-200 and 0-55 words
    python benchmarks/clip_text_bench.py --batch 64 --groups 1 2 4 8 16

The prompts are notebook 04's: a name after 0..hi words of dialogue filler (`dialogue_filler`), the
word counts drawn uniformly, tokenized at the model's 248 positions. One batch pads every prompt to
the longest; groups sort by length and pad each group to its own longest. Prints the median
milliseconds per forward+backward for each count of groups, and each one's speed-up over one batch,
as JSON; also the largest difference of the embeddings from one batch's (float rounding).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import open_clip
import torch

from ppllava.config import PPLLaVAConfig
from ppllava.data.clip_pairs import dialogue_filler
from ppllava.model import PPLLaVA
from ppllava.ops import tokenize_clip_prompts


def timed(model: PPLLaVA, ids: torch.Tensor, groups: int, repeats: int) -> float:
    """Median milliseconds of one forward and backward of the text tower."""
    times = []
    for _ in range(repeats):
        model.zero_grad()
        start = time.perf_counter()
        model.encode_prompts(ids, groups=groups).sum().backward()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128, help="prompts per batch (the CLIP stage's batch_size)")
    parser.add_argument("--fillers", type=int, nargs="+", default=[200, 55], help="most filler words, one run each")
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = PPLLaVA(PPLLaVAConfig.from_name("tiny")).train()
    model.clip_text.requires_grad_(True)  # as the CLIP stage trains it
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    rng = np.random.default_rng(0)
    out = {"batch": args.batch, "threads": torch.get_num_threads(), "ms": {}, "speedup": {}, "max_abs_diff": {}}
    for hi in args.fillers:
        prompts = [f"{dialogue_filler(int(rng.integers(0, hi + 1)))} a red star".strip() for _ in range(args.batch)]
        ids = tokenize_clip_prompts(prompts, tokenizer, model.config.clip_extended_context)
        with torch.no_grad():
            one = model.encode_prompts(ids)
        timed(model, ids, 1, 2)  # warm-up
        ms = {g: timed(model, ids, g, args.repeats) for g in args.groups}
        with torch.no_grad():
            diff = {g: float((model.encode_prompts(ids, groups=g) - one).abs().max()) for g in args.groups}
        key = f"filler 0-{hi}"
        out["ms"][key] = {g: round(v, 1) for g, v in ms.items()}
        out["speedup"][key] = {g: round(ms[args.groups[0]] / v, 2) for g, v in ms.items()}
        out["max_abs_diff"][key] = diff
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
