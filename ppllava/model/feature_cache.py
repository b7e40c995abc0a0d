"""Vision-tower features of frames already seen, for the stages that train with the tower frozen.

SFT and DPO read the same frames every epoch (and DPO reads each video twice a step, for the chosen
and the rejected answer, and twice more for the reference model), while the CLIP towers do not
change: the same pixels give the same features. `FrozenFeatureCache` keys each frame by a digest of
its pixel bytes and keeps its penultimate-layer patch tokens, so every frame goes through the tower
once per run. Outputs are bit for bit those of the tower (tests/test_feature_cache.py trains with and
without it and compares the weights).
"""
from __future__ import annotations

from typing import Callable, Dict, List

import torch
import xxhash


class FrozenFeatureCache:
    """Patch tokens by frame, up to `max_mb` MiB; frames seen after it is full are computed, not kept.

    `features(pixels, compute)`: pixels `(n, 3, S, S)` -> `(n, N, Dv)`, running `compute` on the frames
    it has not seen (in one batch) and reading the rest from memory. `kind` names what `compute` returns
    per frame when it is more than the features (pooling 'dominant' stores its [CLS] attention and keys
    beside them, one row per patch), so rows of different kinds never answer for each other."""

    def __init__(self, max_mb: float):
        if not max_mb > 0:
            raise ValueError(f"FrozenFeatureCache needs max_mb > 0, got {max_mb}")
        self.max_bytes = int(max_mb * 2 ** 20)
        self.stored: Dict[bytes, torch.Tensor] = {}
        self.bytes = 0
        self.hits = self.misses = 0

    @staticmethod
    def keys(pixels: torch.Tensor, kind: str = "") -> List[bytes]:
        """One digest per frame of `kind`, its dtype, shape and pixel bytes: equal keys mean equal frames."""
        frames = pixels.detach().cpu().contiguous()
        if frames.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the same bytes as int16
            frames = frames.view(torch.int16)
        head = f"{kind}{pixels.dtype}{tuple(frames.shape[1:])}".encode()
        array = frames.numpy()
        # xxHash's 128-bit XXH3 for speed, not secrecy: 0.4 ms for 256 frames of 64 px where SHA-1 (in
        # hardware) took 6.8 ms, an eighth of a needle training step at 256 frames. Frames are not
        # chosen by an adversary, and 128 bits leave no chance of two frames sharing a key by accident.
        return [head + xxhash.xxh3_128_digest(frame) for frame in array]  # the array's own buffer, no copy

    def features(self, pixels: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor],
                 kind: str = "") -> torch.Tensor:
        keys = self.keys(pixels, kind)
        missing = [i for i, key in enumerate(keys) if key not in self.stored]
        # A frame twice in one batch (DPO's chosen and rejected share the video) is computed once.
        first = list({keys[i]: i for i in reversed(missing)}.values())
        new = {}
        if first:
            computed = compute(pixels[first])
            new = {keys[i]: row for i, row in zip(first, computed)}
            for key, row in new.items():
                size = row.numel() * row.element_size()
                if self.bytes + size <= self.max_bytes:
                    self.stored[key] = row.detach().clone()  # a view would keep the whole batch alive
                    self.bytes += size
        self.hits += len(keys) - len(first)  # frames not sent through the tower
        self.misses += len(first)
        return torch.stack([self.stored[key] if key in self.stored else new[key] for key in keys])
