"""Plain, loop-over-windows formulations of the method's formulas, written from DESIGN.md §2 as
directly as possible. Slow on purpose: the fast ops are tested against them."""
import itertools
import math

import torch


def pool_by_loop(x, relevance, grid, out, kernel, stride, temperature=0.01, weighting="softmax", margin=3.0):
    """x (B, N, D), relevance (B, T, H, W) or None -> (B, T'*H'*W', D), in float64."""
    B, _, D = x.shape
    x5 = x.double().reshape(B, *grid, D)
    rows = []
    for b in range(B):
        for t, h, w in itertools.product(*(range(o) for o in out)):
            idx = [
                (t * stride[0] + i, h * stride[1] + j, w * stride[2] + k)
                for i, j, k in itertools.product(*(range(k) for k in kernel))
            ]
            xs = torch.stack([x5[b, i, j, k] for i, j, k in idx])  # (K, D)
            if relevance is None:
                a = torch.full((len(idx),), 1.0 / len(idx), dtype=torch.float64)
            else:
                s = torch.stack([relevance[b, i, j, k].double() for i, j, k in idx])
                if weighting == "softmax":
                    e = torch.exp((s - s.max()) / temperature)
                    a = e / e.sum()
                elif weighting == "invariant":  # window_weights' docstring, patch by patch
                    present = [n for n in range(len(s)) if s[n] > 0]
                    logs = {n: math.log(float(s[n])) for n in present}
                    top = max(present, key=logs.__getitem__)
                    rest = [logs[n] for n in present if n != top]
                    gap = max(logs[top] - sum(rest) / len(rest), 1e-3) if rest else 1.0
                    e = torch.tensor([math.exp((logs[n] - logs[top]) * (margin + math.log(max(len(rest), 1))) / gap)
                                      if n in logs else 0.0 for n in range(len(s))], dtype=torch.float64)
                    a = e / e.sum()
                elif weighting == "peak":  # share of the video's peak, sharpened by margin + log(K - 1)
                    peak = float(relevance[b].double().max())
                    share = s / peak if peak > 0 else torch.zeros_like(s)
                    e = torch.exp((margin + math.log(max(len(s) - 1, 1))) * (share - share.max()))
                    a = e / e.sum()
                else:
                    a = s / s.sum()
            rows.append((a[:, None] * xs).sum(0))
    return torch.stack(rows).reshape(B, -1, D)


def extend_positions_by_rows(p, keep=20, factor=4):
    """DESIGN.md §2 context extension, one row at a time (generalised keep/factor)."""
    length = p.shape[0]
    q = [p[r] for r in range(keep)]
    for j in range(1, length - keep):
        for m in range(factor):
            q.append(((factor - m) * p[keep - 1 + j] + m * p[keep + j]) / factor)
    for m in range(factor):
        q.append(p[length - 1] + m * (p[length - 1] - p[length - 2]) / factor)
    return torch.stack(q)
