"""Figures for slides: matplotlib, written atomically as PNG (readable offline, in MLflow and DVC)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

from e2essl.data.writers import atomic_path
from e2essl.observables import PIXEL

ARM_STYLE = {
    "scratch": {"color": "#4C72B0", "label": "scratch"},
    "finetune": {"color": "#DD8452", "label": "finetuned (pretrained)"},
    "linear_probe": {"color": "#55A868", "label": "linear probe (frozen)"},
}


def save(fig: plt.Figure, path: str | Path, dpi: int = 130) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return Path(path)


def _log_image(ax: plt.Axes, img: np.ndarray, title: str, extent: float, vmax: float | None = None) -> None:
    positive = img[img > 0]
    norm = None
    if positive.size:
        top = vmax if vmax is not None else positive.max()
        norm = LogNorm(vmin=max(positive.min(), top * 1e-4), vmax=top)
    im = ax.imshow(np.where(img > 0, img, np.nan), norm=norm, cmap="viridis", extent=[-extent, extent, -extent, extent], origin="lower")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(r"$\Delta\phi$")
    ax.set_ylabel(r"$\Delta\eta$")
    plt.colorbar(im, ax=ax, fraction=0.046)


def mean_images(rows: dict[str, np.ndarray], channel_names: list[str], path: str | Path, title: str = "") -> Path:
    """Mean image per row (a class, or real / generated) and channel, (C, H, W) each, log colour scale."""
    names = list(rows)
    c, h, _ = rows[names[0]].shape
    fig, axes = plt.subplots(len(names), c, figsize=(3.3 * c, 3.0 * len(names)), squeeze=False)
    extent = h * PIXEL / 2
    for ch in range(c):
        vmax = max(float(rows[n][ch].max()) for n in names) or None
        for r, name in enumerate(names):
            _log_image(axes[r, ch], rows[name][ch], f"{name}: {channel_names[ch]} (mean GeV)", extent, vmax)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def image_grid(real: np.ndarray, fake: np.ndarray, path: str | Path, n: int = 4, title: str = "") -> Path:
    """``n`` real and ``n`` generated jets side by side, channels summed, log colour scale."""
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.4), squeeze=False)
    extent = real.shape[-1] * PIXEL / 2
    for i in range(n):
        for r, (label, images) in enumerate((("real", real), ("generated", fake))):
            if i < len(images):
                _log_image(axes[r, i], images[i].sum(axis=0), f"{label} {i + 1}", extent)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def observable_overlays(real_obs: dict[str, np.ndarray], fake_obs: dict[str, np.ndarray], path: str | Path, labels: dict[str, str]) -> Path:
    """Histograms of real (filled) and generated (line) jets for each scalar observable."""
    keys = [k for k in labels if k in real_obs]
    cols = 4
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        r, f = real_obs[key], fake_obs[key]
        lo, hi = np.percentile(np.concatenate([r, f]), [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
        ax.hist(r, bins=bins, density=True, alpha=0.45, label="real", color="#4C72B0")
        ax.hist(f, bins=bins, density=True, histtype="step", lw=1.6, label="generated", color="#C44E52")
        ax.set_xlabel(labels[key], fontsize=9)
        ax.set_yticks([])
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    return save(fig, path)


def loss_curves(steps: list[int], series: dict[str, list[float]], path: str | Path, title: str, xlabel: str = "step") -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, values in series.items():
        ax.plot(steps, values, label=name)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return save(fig, path)
