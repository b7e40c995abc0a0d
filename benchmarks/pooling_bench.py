"""Prompt-guided pooling vs torch's avg_pool3d vs the unfold formulation, side by side.

    python benchmarks/pooling_bench.py                      # paper shape, CPU, float32
    python benchmarks/pooling_bench.py --device cuda --dtype bfloat16

Paper shape: B=1, T=32, H=W=24, D=4096, kernel = stride = (2, 3, 3) -> 1024 tokens.
avg_pool3d gets its data channel-major (B, D, T, H, W), as torch wants it; the other two get the
model's token-major (B, N, D). Targets (issue #2): forward <= 1.0x avg_pool3d, forward+backward
<= 1.5x, >= 8x faster than unfold, no copy of the input per kernel element (peak extra memory).
Issue #13: what the NaN/Inf check of the tokens and the map costs (check_finite on vs off).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_extra_mib, time_ms  # noqa: E402

from ppllava.ops import prompt_guided_pool3d  # noqa: E402

KERNEL = (2, 3, 3)


def make_inputs(shape, dtype, device, requires_grad):
    B, T, H, W, D = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T * H * W, D, generator=g).to(device=device, dtype=dtype)
    s = torch.softmax(100 * torch.rand(B, T * H * W, generator=g), -1).view(B, T, H, W).to(device)
    x_cm = x.reshape(B, T, H, W, D).permute(0, 4, 1, 2, 3).contiguous()  # avg_pool3d's own layout
    for t in (x, s, x_cm):
        t.requires_grad_(requires_grad)
    return x, s, x_cm


def unfold_pool(x_cm, s, kernel, temperature=0.01):
    """The released code's formulation: unfold each axis, softmax the window, weight and sum."""
    B, D = x_cm.shape[:2]
    u = x_cm
    w = s[:, None]
    for dim, k in zip((2, 3, 4), kernel):
        u, w = u.unfold(dim, k, k), w.unfold(dim, k, k)
    K = kernel[0] * kernel[1] * kernel[2]
    u = u.reshape(*u.shape[:5], K)  # copies the input
    w = torch.softmax(w.reshape(*w.shape[:5], K).float() / temperature, -1).to(u.dtype)
    return (u * w).sum(-1)  # another full-size temporary


def runners(shape, dtype, device, backward):
    x, s, x_cm = make_inputs(shape, dtype, device, backward)
    grid = shape[1:4]
    ops = {
        "avg_pool3d": lambda: F.avg_pool3d(x_cm, KERNEL),
        "prompt_guided_pool3d": lambda: prompt_guided_pool3d(x, s, grid, kernel=KERNEL)[0],
        "prompt_guided_pool3d unchecked": lambda: prompt_guided_pool3d(x, s, grid, kernel=KERNEL, check_finite=False)[0],
        "unfold": lambda: unfold_pool(x_cm, s, KERNEL),
    }
    if not backward:
        return {k: (lambda f=f: f()) for k, f in ops.items()}

    def with_backward(f):
        def run():
            out = f()
            out.backward(torch.ones_like(out))
            for t in (x, s, x_cm):
                t.grad = None
        return run

    return {k: with_backward(f) for k, f in ops.items()}


def _forward_backward(shape, dtype, device, name):
    return runners(shape, dtype, device, backward=True)[name]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--shape", default="1,32,24,24,4096", help="B,T,H,W,D")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    dtype = getattr(torch, args.dtype)
    if args.device == "cpu" and dtype == torch.bfloat16:
        parser.error("avg_pool3d has no bfloat16 kernel on the CPU; compare in float32 there")

    result = {"shape_BTHWD": shape, "kernel": KERNEL, "device": args.device, "dtype": args.dtype,
              "threads": torch.get_num_threads(), "ms": {}, "peak_extra_mib": {}}
    for phase, backward in (("forward", False), ("forward+backward", True)):
        with torch.set_grad_enabled(backward):
            for name, fn in runners(shape, dtype, args.device, backward).items():
                # 3 warm-up calls: on a shared CPU the first op timed otherwise absorbs page faults
                result["ms"][f"{name} {phase}"] = time_ms(fn, args.device, args.repeats, warmup=3)
    for name in ("avg_pool3d", "prompt_guided_pool3d", "unfold"):
        setup = functools.partial(_forward_backward, shape, dtype, args.device, name)
        result["peak_extra_mib"][name] = peak_extra_mib(setup, args.device)
    ms = result["ms"]
    input_mib = shape[0] * shape[1] * shape[2] * shape[3] * shape[4] * torch.finfo(dtype).bits / 8 / 2**20
    result["input_mib"] = input_mib
    result["ratios"] = {
        "forward vs avg_pool3d (target <= 1.0)": ms["prompt_guided_pool3d forward"] / ms["avg_pool3d forward"],
        "forward+backward vs avg_pool3d (target <= 1.5)":
            ms["prompt_guided_pool3d forward+backward"] / ms["avg_pool3d forward+backward"],
        "unfold forward / ours (target >= 8)": ms["unfold forward"] / ms["prompt_guided_pool3d forward"],
        "unfold forward+backward / ours": ms["unfold forward+backward"] / ms["prompt_guided_pool3d forward+backward"],
        "finite check on / off, forward": ms["prompt_guided_pool3d forward"] / ms["prompt_guided_pool3d unchecked forward"],
        "finite check on / off, forward+backward":
            ms["prompt_guided_pool3d forward+backward"] / ms["prompt_guided_pool3d unchecked forward+backward"],
    }

    print(f"shape (B,T,H,W,D) = {shape}, kernel = stride = {KERNEL}, {args.device} {args.dtype}, "
          f"{result['threads']} threads, input {input_mib:.0f} MiB")
    for key, value in ms.items():
        print(f"  {key:<40s} {value:9.2f} ms")
    print("peak extra memory of forward+backward (beyond the inputs):")
    for key, value in result["peak_extra_mib"].items():
        print(f"  {key:<40s} {value:9.1f} MiB  ({value / input_mib:.2f} x input)")
    print("ratios:")
    for key, value in result["ratios"].items():
        print(f"  {key:<50s} {value:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
