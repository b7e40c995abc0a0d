"""Long-video prefill cost against length: time and peak memory for `none`, `adaptive` and `prompt`
(16 visual tokens; `none` only where its tokens fit the tiny LLM's 1,024 positions), each video
streamed a chunk of frames at a time (`PPLLaVA.long_video_tokens`) or given whole as one pixel tensor,
side by side in one run (ppllava/long_video_cost.py says how each is measured).

    python benchmarks/long_video_bench.py                         # 16 -> 2,048 frames, chunks of 64
    python benchmarks/long_video_bench.py --frames 16 256 --chunk 32 --json out.json
"""
from __future__ import annotations

import argparse
import json

import torch

from ppllava.long_video_cost import MODES, measure_prefill_cost


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
    args = parser.parse_args(argv)
    rows = measure_prefill_cost(args.frames, args.modes, args.chunk, repeats=args.repeats)
    short, long = (256 if 256 in args.frames else min(args.frames)), max(args.frames)
    result = {"preset": "tiny", "chunk_frames": args.chunk, "threads": torch.get_num_threads(), "rows": rows,
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
