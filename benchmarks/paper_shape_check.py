"""Numerics of the operations at the `paper` shape, on CUDA in bf16 (or the CPU in fp32).

    python benchmarks/paper_shape_check.py --device cuda

Checks, each printed with its measured error: prompt-guided pooling of bf16 tokens vs the same
pooling in fp32 (softmax, normalized and invariant weights); uniform weights vs torch's avg_pool3d; forward+backward finite; relevance from
bf16 embeddings; a paper-sized Hugging Face CLIP text tower (768 wide, 12 layers) extended to
248 positions encoding a 248-token prompt in bf16 vs fp32. Exits non-zero if a check fails.
"""
from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

from ppllava.ops import extend_clip_text_context, prompt_guided_pool3d, prompt_relevance


def check(name, value, limit):
    ok = value <= limit
    print(f"  [{'ok' if ok else 'FAIL'}] {name}: {value:.3g} (limit {limit:g})")
    return ok


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    dev = torch.device(args.device)
    low = torch.bfloat16 if dev.type == "cuda" else torch.float32
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}), torch {torch.__version__}")
    g = torch.Generator().manual_seed(0)
    B, T, H, W, D, Dc = 1, 32, 24, 24, 4096, 768
    grid = (T, H, W)
    results = []

    e = torch.randn(B, T, H, W, Dc, generator=g)
    c = torch.randn(B, Dc, generator=g)
    _, s = prompt_relevance(e.to(dev, low), c.to(dev, low), math.log(100.0))
    # Reference: the same bf16-rounded inputs in float64, so only the computation differs.
    _, s_ref = prompt_relevance(e.to(low).double(), c.to(low).double(), math.log(100.0))
    results.append(check("relevance s from bf16 embeddings, max |s - s_fp64| / max s",
                         float((s.double().cpu() - s_ref).abs().max() / s_ref.max()), 0.05))

    x = torch.randn(B, T * H * W, D, generator=g)
    x_low = x.to(dev, low).requires_grad_()
    s_ref32 = s_ref.float().to(dev)
    pooled, out_grid = prompt_guided_pool3d(x_low, s_ref32, grid, kernel=(2, 3, 3))
    pooled32, _ = prompt_guided_pool3d(x.to(dev), s_ref32, grid, kernel=(2, 3, 3))
    print(f"  pooled {tuple(pooled.shape)} {pooled.dtype}, grid {out_grid}")
    results.append(check("pooling bf16 vs fp32, max abs error", float((pooled.detach().float() - pooled32).abs().max()), 0.05))
    pooled.float().square().mean().backward()
    results.append(check("backward: non-finite gradient entries", float((~torch.isfinite(x_low.grad)).sum()), 0))
    for weighting in ("normalized", "invariant"):  # the paper's weights and the long-video rule (issue #15)
        low_w, _ = prompt_guided_pool3d(x.to(dev, low), s_ref32, grid, kernel=(2, 3, 3), weighting=weighting, margin=4.0)
        full_w, _ = prompt_guided_pool3d(x.to(dev), s_ref32, grid, kernel=(2, 3, 3), weighting=weighting, margin=4.0)
        results.append(check(f"pooling bf16 vs fp32, weighting {weighting}, max abs error",
                             float((low_w.float() - full_w).abs().max()), 0.05))

    uniform, _ = prompt_guided_pool3d(x.to(dev, low), None, grid, kernel=(2, 3, 3))
    x_cm = x.to(dev, low).reshape(B, T, H, W, D).permute(0, 4, 1, 2, 3).contiguous()
    ref = F.avg_pool3d(x_cm.float(), (2, 3, 3)).permute(0, 2, 3, 4, 1).reshape(B, -1, D)
    results.append(check("uniform pooling vs avg_pool3d, max abs error", float((uniform.float() - ref).abs().max()), 0.02))

    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=77, eos_token_id=49407)
    text = extend_clip_text_context(CLIPTextModel(config)).to(dev).eval()
    ids = torch.randint(1, 49406, (2, 248), generator=g)
    ids[:, 0], ids[:, -1] = 49406, 49407
    with torch.no_grad():
        full = text(input_ids=ids.to(dev)).pooler_output
        half = text.to(low)(input_ids=ids.to(dev)).pooler_output
    print(f"  CLIP text tower, 248-token prompt: pooled {tuple(half.shape)} {half.dtype}")
    rel = float((half.float() - full).norm() / full.norm())
    results.append(check("extended CLIP text bf16 vs fp32, relative error", rel, 0.05))
    print("all checks passed" if all(results) else "SOME CHECKS FAILED")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
