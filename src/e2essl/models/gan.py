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
* **Position-aware.** Jet images are centred, so both networks get coordinate channels (eta, phi,
  distance from the centre; CoordConv) instead of inferring position from the zero-padded borders,
  which produced border artefacts.
* **A critic that sees the physics.** Besides its convolutions, the discriminator reads
  differentiable jet-level statistics (soft hit-pixel count, summed intensity and width per channel),
  the very quantities the generated set is judged on.
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


def coordinates(size: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 3, size, size): eta, phi in [-1, 1] and the distance from the centre (CoordConv).

    Jet images are centred, so what a pixel holds depends on where it is; coordinate channels give
    the convolutions that position directly instead of leaving them to infer it from the borders.
    """
    axis = torch.linspace(-1.0, 1.0, size, dtype=like.dtype, device=like.device)
    eta, phi = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([eta, phi, torch.sqrt(eta**2 + phi**2)]).unsqueeze(0)


class UpBlock(nn.Module):
    """Nearest-neighbour x2, conv3x3 on (features + coordinates), per-pixel noise, BatchNorm, ReLU.

    The noise (StyleGAN's noise inputs, Karras et al. 2019; one learned strength per channel) lets
    the generator scatter deposits differently from jet to jet instead of at the same places.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin + 3, cout, 3, padding=1)
        self.noise_strength = nn.Parameter(torch.zeros(1, cout, 1, 1))
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        coords = coordinates(x.shape[-1], x).expand(x.shape[0], -1, -1, -1)
        x = self.conv(torch.cat([x, coords], dim=1))
        noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], generator=gen, device=x.device, dtype=x.dtype)
        return torch.relu(self.norm(x + self.noise_strength * noise))


class Generator(nn.Module):
    """latent (B, latent_dim) -> images in log space (B, C, H, W), exact zeros allowed."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        self.config = config
        b = config.base_channels
        widths = [max(b * 8 // 2**i, b // 2) for i in range(config.n_upsamplings + 1)]
        self.stem = nn.Sequential(nn.Linear(config.latent_dim, widths[0] * 16), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList(UpBlock(cin, cout) for cin, cout in itertools.pairwise(widths))
        self.out = nn.Conv2d(widths[-1] + 3, config.channels, 3, padding=1)
        self._width0 = widths[0]

    @classmethod
    def from_config(cls, config: GanConfig | dict) -> Generator:
        if isinstance(config, dict):
            config = GanConfig(**{**config, "scale": tuple(config["scale"])})
        return cls(config)

    def forward(self, z: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """``gen`` draws the per-pixel noise; pass a seeded one for reproducible jets."""
        x = self.stem(z).view(-1, self._width0, 4, 4)  # (B, 8b, 4, 4)
        for block in self.blocks:
            x = block(x, gen)  # (B, ..., 2^k, 2^k)
        coords = coordinates(x.shape[-1], x).expand(x.shape[0], -1, -1, -1)
        size = self.config.image_size
        off = (x.shape[-1] - size) // 2
        x = torch.relu(self.out(torch.cat([x, coords], dim=1)))[..., off : off + size, off : off + size]  # (B, C, H, W), >= 0
        if self.config.towers:
            c = self.config.hcal_channel
            towers = nn.functional.avg_pool2d(x[:, c : c + 1], 5)  # (B, 1, H/5, W/5)
            hcal = nn.functional.interpolate(towers, scale_factor=5, mode="nearest")
            x = torch.cat([x[:, :c], hcal, x[:, c + 1 :]], dim=1)
        return x

    @torch.no_grad()
    def energies(self, z: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Raw images in GeV, (B, C, H, W)."""
        return from_log_space(self(z, gen), self.config.scale)


def physics_summary(x: torch.Tensor) -> torch.Tensor:
    """Differentiable jet-level statistics of log-space images (B, C, H, W) -> (B, 3C): per channel the
    (soft) number of hit pixels, the summed intensity and the intensity-weighted distance from the
    centre. The critic sees them directly: they are what the generated jets are judged on."""
    radius = coordinates(x.shape[-1], x)[:, 2:3]  # (1, 1, H, W)
    hits = torch.log1p(torch.tanh(x / 0.05).sum(dim=(2, 3)))  # (B, C)
    total = x.sum(dim=(2, 3))  # (B, C)
    width = (x * radius).sum(dim=(2, 3)) / (total + 1e-3)  # (B, C)
    return torch.cat([hits, torch.log1p(total), width], dim=1)


class Discriminator(nn.Module):
    """images in log space (B, C, H, W) -> realness score (B,), spectral-normalised."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        b = config.base_channels
        # Halve the image until it is a few pixels wide: 5 steps for 125 x 125 (-> 3 x 3).
        n_down = max(1, math.ceil(math.log2(config.image_size)) - 2)
        widths = [config.channels + 3] + [min(b // 2 * 2**i, 4 * b) for i in range(n_down)]
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(widths):
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(0.2, inplace=True)]
        self.features = nn.Sequential(*layers)
        n_summary = 3 * config.channels
        self.summary = nn.Sequential(spectral_norm(nn.Linear(2 * n_summary, 32)), nn.LeakyReLU(0.2, inplace=True))
        self.head = spectral_norm(nn.Linear(widths[-1] + 32 + 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coords = coordinates(x.shape[-1], x).expand(x.shape[0], -1, -1, -1)
        h = self.features(torch.cat([x, coords], dim=1)).sum(dim=(2, 3))  # (B, 4b): global sum pooling
        # Minibatch standard deviations: let the critic see a collapsed, too-uniform batch, in its
        # features and in the physics summary (a generator that always draws 5 tracks shows here).
        spread = h.std(dim=0, unbiased=False).mean().expand(h.shape[0], 1)
        phys = physics_summary(x)  # (B, 3C)
        phys_spread = phys.std(dim=0, unbiased=False).expand_as(phys)
        return self.head(torch.cat([h, self.summary(torch.cat([phys, phys_spread], dim=1)), spread], dim=1)).squeeze(1)


def hinge_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: mean relu(1 - D(real)) + mean relu(1 + D(fake))."""
    return torch.relu(1.0 - real_scores).mean() + torch.relu(1.0 + fake_scores).mean()


def hinge_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: -mean D(fake)."""
    return -fake_scores.mean()
