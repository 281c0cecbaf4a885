"""A GAN for sparse detector images: DCGAN-style generator, spectral-norm discriminator, hinge loss.

Why this design (README, "The GAN"):

* **Transformed energy space.** Both networks work on ``x = log1p(E / s_c)`` (``s_c``: the mean
  non-zero pixel energy of channel ``c`` in the training pool), which compresses the heavy tail
  into a range a network can produce.
* **Exact zeros.** The generator's last activation is a ReLU, so most pixels come out exactly 0, as
  in the detector; the energies are ``E = s_c * expm1(x)``.
* **HCAL towers by construction.** When the images have an HCAL channel and a size divisible by 5,
  the generator's HCAL output is averaged over 5 x 5 blocks and spread back, so every generated
  HCAL tower is a constant 5 x 5 block like the real read-out.
* **Stable on small data.** Spectral normalisation in the discriminator (Miyato et al. 2018), the
  hinge loss, Adam with beta1 = 0, and a minibatch standard-deviation feature against mode collapse.
  The generator upsamples by nearest neighbour + convolution (no checkerboard artefacts) to the
  next power of two and crops to the image size.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass(frozen=True)
class GanConfig:
    """Everything needed to rebuild the generator and discriminator."""

    channels: int = 3
    image_size: int = 125
    latent_dim: int = 64
    base_channels: int = 32
    hcal_channel: int | None = 2
    # Per-channel energy scale s_c of the transform x = log1p(E / s_c).
    scale: tuple[float, ...] = (1.0, 1.0, 1.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scale"] = list(self.scale)
        return d

    @property
    def towers(self) -> bool:
        return self.hcal_channel is not None and self.image_size % 5 == 0

    @property
    def n_upsamplings(self) -> int:
        """Doublings from 4 x 4 to the first power of two at least as large as the image."""
        return max(1, math.ceil(math.log2(self.image_size / 4)))


def to_log_space(energies: torch.Tensor, scale: tuple[float, ...]) -> torch.Tensor:
    """(B, C, H, W) GeV -> log1p(E / s_c)."""
    s = torch.tensor(scale, dtype=energies.dtype, device=energies.device).view(1, -1, 1, 1)
    return torch.log1p(energies / s)


def from_log_space(x: torch.Tensor, scale: tuple[float, ...]) -> torch.Tensor:
    """Inverse of :func:`to_log_space`."""
    s = torch.tensor(scale, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return torch.expm1(x) * s


class Generator(nn.Module):
    """latent (B, latent_dim) -> images in log space (B, C, H, W), exact zeros allowed."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        self.config = config
        b = config.base_channels
        widths = [max(b * 8 // 2**i, b // 2) for i in range(config.n_upsamplings + 1)]
        self.stem = nn.Sequential(nn.Linear(config.latent_dim, widths[0] * 16), nn.ReLU(inplace=True))
        blocks = []
        for cin, cout in itertools.pairwise(widths):
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(widths[-1], config.channels, 3, padding=1)
        self._width0 = widths[0]

    @classmethod
    def from_config(cls, config: GanConfig | dict) -> Generator:
        if isinstance(config, dict):
            config = GanConfig(**{**config, "scale": tuple(config["scale"])})
        return cls(config)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem(z).view(-1, self._width0, 4, 4)  # (B, 8b, 4, 4)
        x = self.blocks(x)  # (B, b/2.., 2^k, 2^k)
        size = self.config.image_size
        off = (x.shape[-1] - size) // 2
        x = torch.relu(self.out(x))[..., off : off + size, off : off + size]  # (B, C, H, W), >= 0
        if self.config.towers:
            c = self.config.hcal_channel
            towers = nn.functional.avg_pool2d(x[:, c : c + 1], 5)  # (B, 1, H/5, W/5)
            hcal = nn.functional.interpolate(towers, scale_factor=5, mode="nearest")
            x = torch.cat([x[:, :c], hcal, x[:, c + 1 :]], dim=1)
        return x

    @torch.no_grad()
    def energies(self, z: torch.Tensor) -> torch.Tensor:
        """Raw images in GeV, (B, C, H, W)."""
        return from_log_space(self(z), self.config.scale)


class Discriminator(nn.Module):
    """images in log space (B, C, H, W) -> realness score (B,), spectral-normalised."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        b = config.base_channels
        widths = [config.channels, b // 2, b, 2 * b, 4 * b, 4 * b]
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(widths):
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(0.2, inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = spectral_norm(nn.Linear(widths[-1] + 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).sum(dim=(2, 3))  # (B, 4b): global sum pooling
        # Minibatch standard deviation: lets the critic see a collapsed, too-uniform batch.
        spread = h.std(dim=0, unbiased=False).mean().expand(h.shape[0], 1)
        return self.head(torch.cat([h, spread], dim=1)).squeeze(1)


def hinge_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: mean relu(1 - D(real)) + mean relu(1 + D(fake))."""
    return torch.relu(1.0 - real_scores).mean() + torch.relu(1.0 + fake_scores).mean()


def hinge_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: -mean D(fake)."""
    return -fake_scores.mean()
