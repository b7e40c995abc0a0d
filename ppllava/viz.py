"""Figures the notebooks share. Each returns a matplotlib Figure and draws nothing else."""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import torch

def relevance_grid(maps: torch.Tensor, row_labels: Sequence[str], frames: Optional[Sequence[int]] = None,
                   title: str = "", cmap: str = "magma"):
    """One row per map, one column per frame.

    maps (`torch.FloatTensor` of shape `(R, T, H, W)`): e.g. r or s of several prompts for one video.
    Each row shares one colour scale so frames of a prompt compare directly.
    """
    if maps.ndim != 4:
        raise ValueError(f"maps must have shape (R, T, H, W), got {tuple(maps.shape)}")
    if len(row_labels) != maps.shape[0]:
        raise ValueError(f"{len(row_labels)} row labels for {maps.shape[0]} maps")
    frames = list(range(maps.shape[1])) if frames is None else list(frames)
    fig, axes = plt.subplots(maps.shape[0], len(frames), figsize=(1.3 * len(frames) + 1, 1.4 * maps.shape[0] + 0.4),
                             squeeze=False)
    for i, label in enumerate(row_labels):
        row = maps[i].detach().float().cpu()
        vmin, vmax = float(row.min()), float(row.max())
        for j, t in enumerate(frames):
            ax = axes[i, j]
            ax.imshow(row[t], cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(f"t={t}", fontsize=8)
        axes[i, 0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
