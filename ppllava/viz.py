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


def frame_strip(frames, title: str = "", max_frames: int = 16):
    """The frames of a video side by side. frames: (T, H, W, 3) uint8 (numpy or torch)."""
    frames = frames[:max_frames]
    fig, axes = plt.subplots(1, len(frames), figsize=(1.3 * len(frames), 1.6), squeeze=False)
    for t, (ax, frame) in enumerate(zip(axes[0], frames)):
        ax.imshow(frame)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(f"t={t}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def relevance_overlay(frames, relevance: torch.Tensor, title: str = "", alpha: float = 0.55, cmap: str = "magma"):
    """Each frame with its patch relevance drawn over it (nearest-patch upsampling).

    frames (T, H, W, 3) uint8; relevance (`torch.FloatTensor` of shape `(T, g, g)`), one colour
    scale for the whole video so frames compare directly.
    """
    if relevance.ndim != 3 or relevance.shape[0] != len(frames):
        raise ValueError(f"relevance must have shape (T={len(frames)}, g, g), got {tuple(relevance.shape)}")
    rel = relevance.detach().float().cpu()
    vmin, vmax = float(rel.min()), float(rel.max())
    h, w = frames.shape[1:3]
    fig = frame_strip(frames, title, max_frames=len(frames))
    for t, ax in enumerate(fig.axes):
        ax.imshow(rel[t], cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha, extent=(0, w, h, 0), interpolation="nearest")
    return fig


def training_curves(rows, keys: Sequence[str], title: str = "", smooth: int = 20):
    """One panel per logged metric against the step (rows from `ppllava.train.run.read_logs`).
    Per-step series are drawn raw and as a running mean over `smooth` steps; per-epoch ones as points."""
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 2.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if not points:
            raise ValueError(f"no logged values of {key!r}; logged: {sorted({k for r in rows for k in r})}")
        steps, values = zip(*points)
        if len(points) > 3 * smooth:
            ax.plot(steps, values, lw=0.5, alpha=0.35, color="tab:blue")
            mean = torch.tensor(values).unfold(0, smooth, 1).mean(1)
            ax.plot(steps[smooth - 1:], mean.tolist(), color="tab:blue")
        else:
            ax.plot(steps, values, "o-", color="tab:orange")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
