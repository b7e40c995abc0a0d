"""Where prompt guidance's cost over `adaptive` goes, in one 32-frame prefill: both modes with the finite
checks on and off, then the parts alone (the CLIP text tower on the question, the vision tower, and the
visual tokens from given features: relevance and pooling for `prompt`, pooling for `adaptive`).

    python benchmarks/guidance_bench.py            # CPU, throughput_bench's scaled-down widths, fp32
    python benchmarks/guidance_bench.py --paper    # CUDA, bf16, ViT-L + Vicuna-7B widths (random weights)

Median milliseconds, side by side in one process; `--json` writes them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput_bench as tb  # noqa: E402
from common import refuse_paper_without_cuda, time_ms  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper", action="store_true", help="paper widths in bf16 (needs a GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    refuse_paper_without_cuda(parser, args)
    model, device, out = tb.build(args.paper, args.device), args.device, {}
    kwargs, _ = tb.inputs(model, args.paper, "prompt", device)
    time_ms(tb.prefill_fn(model, kwargs), device, repeats=1, warmup=10)  # a GPU's clocks ramp up: the first row paid it
    for check in (True, False):
        for mode in ("adaptive", "prompt"):
            kwargs, _ = tb.inputs(model, args.paper, mode, device)  # sets the mode's config
            model.config = dataclasses.replace(model.config, check_finite=check)
            out[f"prefill, {mode}, check_finite={check}"] = time_ms(tb.prefill_fn(model, kwargs), device, args.repeats, 3)
    kwargs, _ = tb.inputs(model, args.paper, "prompt", device)
    with torch.no_grad():
        prompt = model.encode_prompts(kwargs["clip_input_ids"])
        features = model.video_features(kwargs["pixel_values_videos"])
        out["CLIP text tower (encode_prompts)"] = time_ms(lambda: model.encode_prompts(kwargs["clip_input_ids"]), device,
                                                          args.repeats, 3)
        out["vision tower, 32 frames"] = time_ms(lambda: model.video_features(kwargs["pixel_values_videos"]), device,
                                                 args.repeats, 3)
        out["visual tokens from features, prompt (relevance, pooling)"] = time_ms(
            lambda: model.video_tokens(None, prompt, video_features=features), device, args.repeats, 3)
        model.config = tb.bench_config(args.paper, "adaptive")
        out["visual tokens from features, adaptive (pooling)"] = time_ms(
            lambda: model.video_tokens(None, None, video_features=features), device, args.repeats, 3)
    for name, ms in out.items():
        print(f"{name:58s} {ms:9.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
