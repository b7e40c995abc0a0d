"""Prefill of one 32-frame video: `prompt` pooling (1024 tokens) vs `none` (18,432) vs
`adaptive` (1024), the selection and merging modes `topk`, `random`, `merge`, `dominant` at
prompt's budget (1024, their default), and `fastv`, which feeds the LLM all 18,432 tokens and keeps
1024 from layer K on, the same weights, measured side by side in one run.

    python benchmarks/throughput_bench.py                       # CPU, scaled-down widths
    python benchmarks/throughput_bench.py --paper               # CUDA, bf16, ViT-L + Vicuna-7B widths
    python benchmarks/throughput_bench.py --modes none prompt topk   # some modes only

The frames are 336 px with 14 px patches (24 x 24), kernel (2, 3, 3), as in the paper. On a
CPU the towers are scaled down so the LLM dominates the cost (sizes printed). Targets
(issue #3): prefill >= 8x faster than `none`; the prompt guidance (CLIP alignment + weighted
pooling) at most 5% of end-to-end time over `adaptive` at the same budget.

Each row gives the visual tokens the LLM reads, the tokens its layers hold from layer K on (K =
`fastv_layer`: 2 with --paper, as FastV; 1 on the CPU, whose LLM has 2 layers), and the prefill cost of
LLM layers 1..K (DESIGN.md section 5), timed from the LLM's first RoPE table to the start of layer K + 1:
under fastv it includes the ranking and the pruning, and it is where fastv pays for every token.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Iterator, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (cuda_peak_extra_mib, peak_extra_mib, random_paper_model, refuse_paper_without_cuda, sync,  # noqa: E402
                    time_ms)

from ppllava.config import PPLLaVAConfig  # noqa: E402
from ppllava.model import PPLLaVA, fastv  # noqa: E402

# The selection and merging modes keep video_token_budget tokens, by default prompt's count (1024 here);
# fastv keeps as many from LLM layer fastv_layer on.
MODES = {"none": {}, "adaptive": dict(video_output_size=(16, 8, 8)), "prompt": {},
         "topk": {}, "random": {}, "merge": {}, "dominant": {}, "fastv": {}}
TEXT_TOKENS = 32


def bench_config(paper: bool, mode: str) -> PPLLaVAConfig:
    if paper:
        return PPLLaVAConfig.from_name("paper", pooling=mode, **MODES[mode])
    return PPLLaVAConfig.from_name(
        "small", image_size=336, patch_size=14, num_frames=32, video_kernel=(2, 3, 3),
        vision_width=64, vision_layers=2, vision_heads=2, text_width=64, text_layers=2, text_heads=2,
        clip_embed_dim=64, llm_hidden=256, llm_layers=2, llm_heads=4, llm_kv_heads=4, llm_intermediate=688,
        llm_max_positions=20000, fastv_layer=1, pooling=mode, **MODES[mode],
    )


def build(paper: bool, device: str):
    config = bench_config(paper, "prompt")
    dtype = torch.bfloat16 if paper else torch.float32
    if paper:  # 7B parameters: built on the GPU, random weights
        model = random_paper_model(config, device)
    else:
        torch.manual_seed(0)
        model = PPLLaVA(config)
    return model.to(device=device, dtype=dtype).eval()


def inputs(model, paper: bool, mode: str, device: str):
    """Switch the (parameter-free) pooling mode and make the prompt for it."""
    g = torch.Generator().manual_seed(0)
    model.config = bench_config(paper, mode)
    n = model.video_token_count(32)
    ids = torch.full((1, n + TEXT_TOKENS), 7, dtype=torch.long)
    ids[0, 1 : 1 + n] = model.config.video_token_id
    video = torch.randn(1, 32, 3, 336, 336, generator=g).to(device, model.dtype)
    clip = torch.zeros(1, 248, dtype=torch.long)
    clip[0, :6] = torch.tensor([49406, 320, 1746, 2368, 286, 49407])
    return dict(input_ids=ids.to(device), pixel_values_videos=video, clip_input_ids=clip.to(device)), n


def prefill_fn(model, kwargs):
    def run():
        with torch.no_grad():
            model(**kwargs, use_cache=True)
    return run


@contextlib.contextmanager
def first_layers_timer(model, device: str) -> Iterator[List[float]]:
    """Within the block, each prefill appends the ms of its LLM layers 1..K (K = fastv_layer): from the
    decoder's first RoPE table (made after the causal mask, before layer 1) to the start of layer K + 1,
    by forward hooks (on CUDA each mark synchronises, a small cost inside the timed prefill)."""
    decoder = fastv.base_model(model.language_model).model
    times: List[float] = []
    marks = {}

    def start(*_):
        if "start" not in marks:  # fastv makes a second table for layers K+1..: the first one starts
            sync(device)
            marks["start"] = time.perf_counter()

    def end(*_):
        sync(device)
        times.append((time.perf_counter() - marks.pop("start")) * 1e3)

    hooks = [decoder.rotary_emb.register_forward_pre_hook(start),
             decoder.layers[model.config.fastv_layer].register_forward_pre_hook(end)]
    try:
        yield times
    finally:
        for hook in hooks:
            hook.remove()


def _setup(paper, device, mode):
    model = build(paper, device)
    return prefill_fn(model, inputs(model, paper, mode, device)[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper", action="store_true", help="paper widths in bf16 (needs a GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), metavar="MODE",
                        help=f"pooling modes to time (default: all of {', '.join(MODES)})")
    args = parser.parse_args()
    refuse_paper_without_cuda(parser, args)
    model = build(args.paper, args.device)
    cfg = bench_config(args.paper, "prompt")
    sizes = (f"vision {cfg.vision_layers} x {cfg.vision_width}, LLM {cfg.llm_layers} x {cfg.llm_hidden} "
             f"({sum(p.numel() for p in model.language_model.parameters()) / 1e6:.1f}M), CLIP text {cfg.text_layers} x "
             f"{cfg.text_width}, {model.dtype}, {args.device}, {torch.get_num_threads()} threads")
    print(f"one video of 32 frames x 336 px (24 x 24 patches), {TEXT_TOKENS} text tokens; {sizes}")
    result = {"sizes": sizes, "modes": {}}
    for mode in args.modes:
        kwargs, n = inputs(model, args.paper, mode, args.device)
        with first_layers_timer(model, args.device) as layers_ms:
            ms = time_ms(prefill_fn(model, kwargs), args.device, args.repeats)
        result["modes"][mode] = {"visual_tokens": n, "tokens_after_layer_k": model.pruned_video_token_count(32),
                                 "prefill_ms": ms, "layers_1_to_k_ms": statistics.median(layers_ms[1:])}  # [0]: warmup
    for mode in args.modes:
        if args.device.startswith("cuda"):  # the allocator's own peak: no second copy of the model needed
            kwargs, _ = inputs(model, args.paper, mode, args.device)
            peak = cuda_peak_extra_mib(prefill_fn(model, kwargs))
        else:  # peak resident memory, in a fresh process per mode
            peak = peak_extra_mib(functools.partial(_setup, args.paper, args.device, mode), args.device)
        result["modes"][mode]["peak_extra_mib"] = peak
    m = result["modes"]
    result["ratios"] = {}
    if {"none", "prompt"} <= set(m):
        result["ratios"]["none / prompt prefill (target >= 8)"] = m["none"]["prefill_ms"] / m["prompt"]["prefill_ms"]
    if {"none", "fastv"} <= set(m):
        result["ratios"]["none / fastv prefill"] = m["none"]["prefill_ms"] / m["fastv"]["prefill_ms"]
    if {"prompt", "adaptive"} <= set(m):
        result["ratios"]["prompt guidance overhead, (prompt - adaptive) / prompt (target <= 0.05)"] = \
            (m["prompt"]["prefill_ms"] - m["adaptive"]["prefill_ms"]) / m["prompt"]["prefill_ms"]
    print(f"  LLM layers 1..K: K = fastv_layer = {cfg.fastv_layer} of {cfg.llm_layers}")
    for mode, row in m.items():
        print(f"  {mode:<9s} {row['visual_tokens']:>6d} visual tokens in, {row['tokens_after_layer_k']:>6d} after layer K  "
              f"prefill {row['prefill_ms']:10.1f} ms (layers 1..K {row['layers_1_to_k_ms']:9.1f} ms)  "
              f"peak extra {row['peak_extra_mib']:9.1f} MiB")
    for key, value in result["ratios"].items():
        print(f"  {key:<75s} {value:7.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
