"""From raw pixel energies (GeV) to network inputs, with statistics from the training split only.

Methods (params.yaml ``data.preprocess``):

* ``e2e``: the original E2E recipe: zero-suppress pixels below 1e-3 GeV, multiply HCAL by 25,
  divide everything by 100.
* ``log``: ``log1p(E / s_c)`` with ``s_c`` the mean non-zero pixel energy of channel ``c`` on the
  training split. Tames the heavy tail and keeps zeros at zero (sparsity survives).
* ``standardise``: ``(E - mean_c) / std_c`` over all pixels of the training split.

Preprocessing runs after augmentation, so the physics augmentations act on energies in GeV.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from e2essl.data.sparse import DenseBuffer, SparseBatch, pixel_tables

E2E_ZERO_SUPPRESSION = 1e-3  # GeV
E2E_HCAL_FACTOR = 25.0
E2E_SCALE = 100.0


@dataclass
class ChannelStats:
    """Running per-channel pixel statistics (float64 sums over the non-zero pixels)."""

    channels: int
    pixels_per_channel: int  # H * W
    n_images: int = 0
    total: list[float] = field(default_factory=list)  # sum of E
    total_sq: list[float] = field(default_factory=list)  # sum of E^2
    nonzero: list[int] = field(default_factory=list)  # number of non-zero pixels

    def __post_init__(self) -> None:
        self.total = self.total or [0.0] * self.channels
        self.total_sq = self.total_sq or [0.0] * self.channels
        self.nonzero = self.nonzero or [0] * self.channels

    def update(self, values: np.ndarray, pixel: np.ndarray, n_images: int) -> None:
        """Add ``n_images`` jets given by their non-zero pixels (zeros add nothing to the sums)."""
        channel = pixel // self.pixels_per_channel
        values = values.astype(np.float64)
        self.n_images += n_images
        for ch, (s, sq, nz) in enumerate(
            zip(
                np.bincount(channel, weights=values, minlength=self.channels),
                np.bincount(channel, weights=values**2, minlength=self.channels),
                np.bincount(channel, minlength=self.channels),
                strict=True,
            )
        ):
            self.total[ch] += float(s)
            self.total_sq[ch] += float(sq)
            self.nonzero[ch] += int(nz)

    @property
    def mean(self) -> list[float]:
        n = max(self.n_images * self.pixels_per_channel, 1)
        return [t / n for t in self.total]

    @property
    def std(self) -> list[float]:
        n = max(self.n_images * self.pixels_per_channel, 1)
        return [max((sq / n - m**2), 0.0) ** 0.5 for sq, m in zip(self.total_sq, self.mean, strict=True)]

    @property
    def mean_nonzero(self) -> list[float]:
        return [t / nz if nz else 1.0 for t, nz in zip(self.total, self.nonzero, strict=True)]


@dataclass
class Normaliser:
    """Turns a :class:`SparseBatch` of raw energies into the (B, C, H, W) network input."""

    method: str
    mean: list[float]
    std: list[float]
    scale: list[float]  # mean non-zero pixel energy per channel
    hcal_channel: int | None = None

    @classmethod
    def from_stats(cls, method: str, stats: ChannelStats, channel_names: list[str]) -> Normaliser:
        hcal = channel_names.index("HCAL") if "HCAL" in channel_names else None
        std = [s if s > 0 else 1.0 for s in stats.std]
        scale = [s if s > 0 else 1.0 for s in stats.mean_nonzero]
        return cls(method, stats.mean, std, scale, hcal)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Normaliser:
        return cls(**d)

    def with_method(self, method: str) -> Normaliser:
        """The same statistics under another method."""
        return Normaliser(method, self.mean, self.std, self.scale, self.hcal_channel)

    def _per_value(self, batch: SparseBatch, per_channel: list[float]) -> torch.Tensor:
        """``per_channel[c]`` for every non-zero pixel of the batch (nnz,)."""
        table = _per_pixel_table(tuple(per_channel), batch.image_shape, batch.values.dtype, batch.values.device)
        return table.index_select(0, batch.pixel)

    def __call__(self, batch: SparseBatch, out: DenseBuffer | None = None) -> torch.Tensor:
        """Network input (B, C, H, W) float32, laid out channels-last in memory (what the
        convolutions run fastest on; filled that way directly, with no copy afterwards).

        With ``out`` the input is written into that reused buffer (valid until its next use)."""
        if self.method == "log":
            return batch.replace(values=torch.log1p(batch.values / self._per_value(batch, self.scale))).dense(channels_last=True, out=out)
        if self.method == "e2e":
            batch = batch.keep(batch.values >= E2E_ZERO_SUPPRESSION)
            factor = [1.0 / E2E_SCALE] * batch.image_shape[0]
            if self.hcal_channel is not None:
                factor[self.hcal_channel] = E2E_HCAL_FACTOR / E2E_SCALE
            return batch.replace(values=batch.values * self._per_value(batch, factor)).dense(channels_last=True, out=out)
        if self.method == "standardise":
            dense = batch.dense(channels_last=True, out=out)
            mean = torch.tensor(self.mean, dtype=dense.dtype, device=dense.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=dense.dtype, device=dense.device).view(1, -1, 1, 1)
            return dense.sub_(mean).div_(std)
        raise ValueError(f"unknown preprocessing method {self.method!r}")


@functools.lru_cache(maxsize=32)
def _per_pixel_table(
    per_channel: tuple[float, ...], image_shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(C*H*W,) ``per_channel[c]`` at every flat pixel index (built once per normaliser and shape)."""
    table = torch.tensor(per_channel, dtype=dtype, device=device)
    return table.index_select(0, pixel_tables(image_shape, device).channel)
