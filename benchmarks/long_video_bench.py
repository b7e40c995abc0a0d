"""Long-video prefill cost against length: time and peak memory for `none`, `adaptive` and `prompt`
(16 visual tokens; `none` only where its tokens fit the tiny LLM's 1,024 positions), each video
streamed a chunk of frames at a time (`PPLLaVA.long_video_tokens`) or given whole as one pixel tensor,
side by side in one run (ppllava/long_video_cost.py says how each is measured).

    python benchmarks/long_video_bench.py                         # 16 -> 2,048 frames, chunks of 64
    python benchmarks/long_video_bench.py --frames 16 256 --chunk 32 --json out.json
    python benchmarks/long_video_bench.py --paper --frames 32 256 2048    # CUDA, bf16, ViT-L + Vicuna-7B

`--paper`: the paper's widths with random weights in bf16 on a GPU, 1,024 visual tokens per video
(`video_output_size` (16, 8, 8), the paper's count at 32 frames) at every length; time and the CUDA
allocator's peak above what the model and (one_shot) the pixels already hold, in this process.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cuda_peak_extra_mib, random_paper_model, refuse_paper_without_cuda, time_ms  # noqa: E402

from ppllava.config import PPLLaVAConfig  # noqa: E402
from ppllava.long_video_cost import MODES, SyntheticFrames, measure_prefill_cost, prefill_call  # noqa: E402
from ppllava.model.token_layout import TokenLayout  # noqa: E402

PAPER_MODES = {"none": {"pooling": "none"},
               "adaptive": {"pooling": "adaptive", "video_output_size": (16, 8, 8)},
               "prompt": {"pooling": "prompt", "video_output_size": (16, 8, 8), "weighting": "invariant"}}


def paper_rows(lengths, modes, chunk_frames: int, repeats: int, device: str):
    """`measure_prefill_cost`'s rows at the paper's widths (one model, its parameter-free mode switched)."""
    model = random_paper_model(PPLLaVAConfig.from_name("paper", **PAPER_MODES["prompt"]), device).to(torch.bfloat16).eval()
    rows = []
    for mode in modes:
        for frames in lengths:
            model.config = PPLLaVAConfig.from_name("paper", num_frames=frames, **PAPER_MODES[mode])
            if TokenLayout(model.config).video_token_count(frames) + 4 > model.config.llm_max_positions:
                continue
            source = SyntheticFrames(1, frames, model.config.image_size)
            for how in ("streamed", "one_shot"):
                pixels = source.read(0, frames).to(device, torch.bfloat16) if how == "one_shot" else None
                run = prefill_call(model, source, pixels, chunk_frames, device)
                ms = time_ms(run, device, repeats)
                rows.append({"mode": mode, "way": how, "frames": frames, "ms": round(ms, 1),
                             "peak_mib": round(cuda_peak_extra_mib(run), 1)})
                print(f"  {mode} {how} {frames}: {ms:.1f} ms, peak +{rows[-1]['peak_mib']:.0f} MiB", flush=True)
                del pixels, run
                torch.cuda.empty_cache()
    return rows


def ratios(rows, mode, way, short, long):
    by = {r["frames"]: r for r in rows if r["mode"] == mode and r["way"] == way}
    if short not in by or long not in by:
        return None
    return {"time": round(by[long]["ms"] / by[short]["ms"], 2),
            "peak memory": round(by[long]["peak_mib"] / max(by[short]["peak_mib"], 1e-9), 2)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64, 256, 1024, 2048])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--chunk", type=int, default=64, help="frames per chunk when streamed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("--paper", action="store_true", help="paper widths in bf16 on --device (a GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="with --paper")
    args = parser.parse_args(argv)
    refuse_paper_without_cuda(parser, args)
    if args.paper:
        rows = paper_rows(args.frames, args.modes, args.chunk, args.repeats, args.device)
    else:
        rows = measure_prefill_cost(args.frames, args.modes, args.chunk, repeats=args.repeats)
    short, long = (256 if 256 in args.frames else min(args.frames)), max(args.frames)
    where = torch.cuda.get_device_name() if args.paper else f"{torch.get_num_threads()} CPU threads"
    result = {"preset": "paper" if args.paper else "tiny", "chunk_frames": args.chunk, "device": where, "rows": rows,
              f"ratios {long} / {short} frames": {f"{m}, {w}": ratios(rows, m, w, short, long)
                                                  for m in args.modes for w in ("streamed", "one_shot")}}
    for r in rows:
        print(f"{r['mode']:9s} {r['way']:9s} {r['frames']:5d} frames  {r['ms']:9.1f} ms  peak +{r['peak_mib']:8.1f} MiB")
    print(json.dumps(result[f"ratios {long} / {short} frames"], indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
