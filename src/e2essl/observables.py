"""Jet observables computed from images: what a physicist checks a data set (or a GAN) with.

All functions take raw-energy images (B, C, H, W) in GeV, numpy or torch, with the jet axis at the
image centre and pixels of :data:`PIXEL` in eta and phi.
"""

from __future__ import annotations

import numpy as np

PIXEL = 0.0174  # ECAL crystal size in eta and phi
N_RADIAL_BINS = 8
RADIAL_EDGES = np.linspace(0.0, 0.4, N_RADIAL_BINS + 1)  # annuli up to the jet radius
INTENSITY_EDGES = np.logspace(-3, 3, 31)  # GeV, for the pixel-intensity spectrum


def pixel_coordinates(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Eta (rows) and phi (columns) of pixel centres relative to the image centre, (H, W) each."""
    eta = (np.arange(h) - (h - 1) / 2) * PIXEL
    phi = (np.arange(w) - (w - 1) / 2) * PIXEL
    return np.meshgrid(eta, phi, indexing="ij")


def jet_observables(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-jet observables, each (B,): total energy and non-zero pixels per channel, the
    energy-weighted width (mean distance from the axis), and the image mass from massless pixel
    four-vectors, plus the radial energy profile (B, N_RADIAL_BINS) as fractions of the total."""
    x = np.asarray(images, dtype=np.float64)
    b, c, h, w = x.shape
    eta, phi = pixel_coordinates(h, w)
    radius = np.hypot(eta, phi)
    total = x.sum(axis=1)  # (B, H, W), all channels
    energy = total.sum(axis=(1, 2))
    safe = np.maximum(energy, 1e-12)
    out: dict[str, np.ndarray] = {}
    for ch in range(c):
        out[f"energy_ch{ch}"] = x[:, ch].sum(axis=(1, 2))
        out[f"pixels_ch{ch}"] = np.count_nonzero(x[:, ch].reshape(b, -1), axis=1).astype(np.float64)
    out["width"] = (total * radius).sum(axis=(1, 2)) / safe
    # Massless four-vectors with pT = pixel energy at (eta, phi).
    px = (total * np.cos(phi)).sum(axis=(1, 2))
    py = (total * np.sin(phi)).sum(axis=(1, 2))
    pz = (total * np.sinh(eta)).sum(axis=(1, 2))
    e = (total * np.cosh(eta)).sum(axis=(1, 2))
    out["mass"] = np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0))
    ring = np.digitize(radius, RADIAL_EDGES) - 1  # (H, W), -1 or N beyond the edges
    profile = np.stack([(total * (ring == r)).sum(axis=(1, 2)) for r in range(N_RADIAL_BINS)], axis=1)
    out["radial_profile"] = profile / safe[:, None]
    return out


def intensity_spectrum(images: np.ndarray) -> np.ndarray:
    """Normalised histogram of non-zero pixel energies per channel, (C, len(INTENSITY_EDGES) - 1)."""
    x = np.asarray(images)
    c = x.shape[1]
    out = []
    for ch in range(c):
        vals = x[:, ch][x[:, ch] > 0]
        hist, _ = np.histogram(vals, INTENSITY_EDGES)
        out.append(hist / max(hist.sum(), 1))
    return np.stack(out)


def observable_matrix(obs: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """Stack scalar observables (and the radial profile bins) into (B, K) with their names."""
    names, cols = [], []
    for key, value in obs.items():
        if value.ndim == 1:
            names.append(key)
            cols.append(value)
        else:
            for i in range(value.shape[1]):
                names.append(f"{key}_{i}")
                cols.append(value[:, i])
    return np.stack(cols, axis=1), names
