"""Augmentations that respect the detector (REFERENCE.md), batched and random per jet.

They act on a :class:`~e2essl.data.sparse.SparseBatch` of raw energies in GeV, so every random
number is drawn either per jet (B,) or per non-zero pixel (nnz,), never per dense pixel, and all of
it runs on whatever device holds the batch. No Python loop over jets.

Exact on the pixel grid
    * ``flip``: mirror in eta and/or in phi (each with probability 1/2);
    * ``rotate90``: transpose eta <-> phi with probability 1/2; with the flips this draws uniformly
      from the 8 symmetries of the square (all rotations by multiples of 90 degrees);
    * ``max_shift``: integer shift in eta and phi in [-s, s] with zero fill (the image is a crop:
      pixels pushed out are lost, nothing wraps around).

Physics-motivated
    * ``split_prob``: collinear splitting: a pixel gives a fraction U(0, 1/2) of its energy to one of
      its 4 neighbours (JetCLR's jet augmentation, on the image grid); energy is conserved;
    * ``scale_jitter``: per-jet, per-channel energy scale ``1 + N(0, s)`` (calibration);
    * ``energy_scale``: per-jet scale ``exp(U(-s, s))`` of every channel at once: the same jet at
      another pT, so that features describe the jet's shape rather than its energy;
    * ``smear_stochastic``, ``smear_constant``: per-pixel resolution
      ``sigma / E = a / sqrt(E) (+) b`` (calorimeter-like), clamped at zero energy;
    * ``soft_dropout``, ``soft_threshold``: pixels below the threshold (GeV) vanish with this
      probability (thresholds, inefficiency).
"""

from __future__ import annotations

import torch

from e2essl.config import Augment
from e2essl.data.sparse import SparseBatch, pixel_tables

# Exact-on-the-grid symmetries only: what supervised training uses.
GEOMETRIC = Augment(max_shift=0, smear_stochastic=0.0, smear_constant=0.0, scale_jitter=0.0, soft_dropout=0.0, split_prob=0.0)
NONE = Augment(
    flip=False, rotate90=False, max_shift=0, smear_stochastic=0.0, smear_constant=0.0, scale_jitter=0.0, soft_dropout=0.0, split_prob=0.0
)

_NEIGHBOURS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def _uniform(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device)


def _per_jet(values: torch.Tensor, jet: torch.Tensor) -> torch.Tensor:
    """A per-jet quantity (B, ...) at every pixel (nnz, ...)."""
    return values.index_select(0, jet)


def _select(positions: torch.Tensor | None, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The entries at ``positions`` of every tensor (all of them when ``positions`` is None)."""
    return tensors if positions is None else tuple(t.index_select(0, positions) for t in tensors)


def _where_not_all(mask: torch.Tensor) -> torch.Tensor | None:
    """Positions where ``mask`` holds, or None when it holds everywhere (nothing to drop)."""
    return None if bool(mask.all()) else torch.nonzero(mask).view(-1)


def _grid_map(b: int, h: int, w: int, cfg: Augment, gen: torch.Generator, device: torch.device) -> torch.Tensor | None:
    """Each jet's exact map of the pixel grid as integer coefficients (B, 6): a pixel at (row, col)
    goes to ``(m0 row + m1 col + m2, m3 row + m4 col + m5)``: flips, then the transpose, then the
    shift, composed per jet so that the pixels are moved in one step. None when nothing moves."""
    moves = cfg.flip or (cfg.rotate90 and h == w) or cfg.max_shift
    if not moves:
        return None
    m = torch.tensor([1, 0, 0, 0, 1, 0], device=device).repeat(b, 1)  # (B, 6): the identity
    if cfg.flip:
        flip_row = _uniform(b, gen, device) < 0.5
        flip_col = _uniform(b, gen, device) < 0.5
        # row -> (h - 1) - row: negate the row coefficients and offset them by h - 1.
        m[:, 0:3] = torch.where(flip_row[:, None], -m[:, 0:3], m[:, 0:3])
        m[:, 2] += flip_row * (h - 1)
        m[:, 3:6] = torch.where(flip_col[:, None], -m[:, 3:6], m[:, 3:6])
        m[:, 5] += flip_col * (w - 1)
    if cfg.rotate90 and h == w:
        swap = (_uniform(b, gen, device) < 0.5)[:, None]
        m = torch.where(swap, m[:, [3, 4, 5, 0, 1, 2]], m)
    if cfg.max_shift:
        s = cfg.max_shift
        shift = torch.randint(-s, s + 1, (2, b), generator=gen, device=device)
        m[:, 2] += shift[0]
        m[:, 5] += shift[1]
    return m


def augment(batch: SparseBatch, cfg: Augment, gen: torch.Generator) -> SparseBatch:
    """One random view of every jet in ``batch``; ``gen`` lives on the batch's device."""
    c, h, w = batch.image_shape
    dev = batch.values.device
    b, j = batch.size, batch.jet
    tables = pixel_tables(batch.image_shape, dev)
    ch, row, col = (t.index_select(0, batch.pixel) for t in (tables.channel, tables.row, tables.col))  # (nnz,) each
    values = batch.values

    grid = _grid_map(b, h, w, cfg, gen, dev)  # (B, 6) or None
    if grid is not None:
        m = _per_jet(grid, j)  # (nnz, 6)
        row, col = m[:, 0] * row + m[:, 1] * col + m[:, 2], m[:, 3] * row + m[:, 4] * col + m[:, 5]
        if cfg.max_shift:  # a crop: pixels pushed out are lost
            inside = _where_not_all((row >= 0) & (row < h) & (col >= 0) & (col < w))
            row, col, ch, values, j = _select(inside, row, col, ch, values, j)

    if cfg.split_prob:
        n = len(values)
        chosen = _uniform(n, gen, dev) < cfg.split_prob
        frac = 0.5 * _uniform(n, gen, dev)
        direction = torch.randint(0, 4, (n,), generator=gen, device=dev)
        steps = torch.tensor(_NEIGHBOURS, device=dev).index_select(0, direction)  # (nnz, 2)
        n_row, n_col = row + steps[:, 0], col + steps[:, 1]
        chosen &= (n_row >= 0) & (n_row < h) & (n_col >= 0) & (n_col < w)
        moved = torch.where(chosen, frac * values, torch.zeros_like(values))
        values = values - moved
        sel = torch.nonzero(chosen).view(-1)
        # The neighbour's share becomes a new entry; densify() sums it with any energy already there.
        row, col = torch.cat([row, n_row[sel]]), torch.cat([col, n_col[sel]])
        ch, j, values = torch.cat([ch, ch[sel]]), torch.cat([j, j[sel]]), torch.cat([values, moved[sel]])

    if cfg.scale_jitter:
        scale = 1.0 + cfg.scale_jitter * torch.randn(b, c, generator=gen, device=dev)
        values = values * scale.view(-1).index_select(0, j * c + ch)
    if cfg.energy_scale:
        log_scale = (2.0 * torch.rand(b, generator=gen, device=dev) - 1.0) * cfg.energy_scale
        values = values * _per_jet(torch.exp(log_scale), j)
    if cfg.smear_stochastic or cfg.smear_constant:
        rel = torch.sqrt(cfg.smear_stochastic**2 / values.clamp_min(1e-6) + cfg.smear_constant**2)
        values = values * (1.0 + rel * torch.randn(len(values), generator=gen, device=dev))
    values = values.clamp_min(0.0)
    keep = values > 0
    if cfg.soft_dropout:
        keep &= ~((values < cfg.soft_threshold) & (_uniform(len(values), gen, dev) < cfg.soft_dropout))
    pixel = ch * (h * w) + row * w + col
    values, pixel, j = _select(_where_not_all(keep), values, pixel, j)
    return SparseBatch(values, pixel, j, b, batch.image_shape)


def two_views(batch: SparseBatch, cfg: Augment, gen: torch.Generator) -> tuple[SparseBatch, SparseBatch]:
    """Two independent random views of each jet (the pair a joint-embedding method compares)."""
    return augment(batch, cfg, gen), augment(batch, cfg, gen)
