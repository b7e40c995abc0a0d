"""Input checks the ops and the model share: a bad value stops with the tensor's name."""
from __future__ import annotations

import torch


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise a ValueError naming `name` when `tensor` holds NaN or Inf.

    Fast path: one sum. IEEE addition never turns NaN or Inf into a finite value, so a finite
    sum proves every element finite; only a non-finite sum (a bad value, or finite values whose
    sum overflows) pays for the exact elementwise test. On a GPU it costs one host sync; callers
    on a hot path take a `check_finite` switch (cost: benchmarks/pooling_bench.py).
    """
    if tensor.device.type == "meta" or not (tensor.is_floating_point() or tensor.is_complex()):
        return  # meta tensors hold no values; integers are always finite
    with torch.no_grad():  # a check, not part of the graph
        total = tensor.sum(dtype=torch.promote_types(tensor.dtype, torch.float32))  # fp16 would overflow at 65504
        if bool(torch.isfinite(total).all()) or bool(torch.isfinite(tensor).all()):
            return
    nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
    first = tuple((~torch.isfinite(tensor)).nonzero()[0].tolist())
    raise ValueError(f"{name} holds {nan} NaN and {inf} Inf value(s) (first at index {first} of shape "
                     f"{tuple(tensor.shape)})")
