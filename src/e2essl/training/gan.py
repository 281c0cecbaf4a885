"""The GAN loop, top to bottom: per step, ``n_critic`` discriminator updates then one generator update.

Real jets are densified and moved to log space batch by batch; epochs shuffle as a pure function of
(seed, epoch); a checkpoint after every epoch holds both networks, both optimisers and the RNG
state, so a killed run resumes to the same weights.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from e2essl.checkpoint import rng_state, save_checkpoint, set_rng_state
from e2essl.data.sparse import SparseJets, epoch_order, shard
from e2essl.models.gan import Discriminator, Generator, hinge_d_loss, hinge_g_loss, to_log_space
from e2essl.training.common import check_finite, epoch_generator

log = logging.getLogger(__name__)


@dataclass
class GanPlan:
    epochs: int
    batch_size: int
    lr_generator: float
    lr_discriminator: float
    betas: tuple[float, float]
    n_critic: int
    seed: int


@dataclass
class GanEpoch:
    epoch: int  # 1-based
    d_loss: float
    g_loss: float
    d_real: float  # mean critic score on real jets
    d_fake: float  # ... and on generated ones: the gap is the discriminator's edge
    seconds: float


def train_gan(
    generator: Generator,
    discriminator: Discriminator,
    real: SparseJets,
    plan: GanPlan,
    device: torch.device,
    checkpoint_path: str,
    fingerprint: str,
    resume: dict | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_epoch: Callable[[GanEpoch], None] | None = None,
    progress: bool = True,
    extra_state: dict | None = None,
) -> list[GanEpoch]:
    """Train the pair; returns the per-epoch history (see the module docstring)."""
    opt_g = torch.optim.Adam(generator.parameters(), lr=plan.lr_generator, betas=plan.betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=plan.lr_discriminator, betas=plan.betas)
    scale = generator.config.scale
    latent = generator.config.latent_dim
    history: list[GanEpoch] = []
    start = 0
    if resume is not None:
        generator.load_state_dict(resume["generator"])
        discriminator.load_state_dict(resume["discriminator"])
        opt_g.load_state_dict(resume["opt_g"])
        opt_d.load_state_dict(resume["opt_d"])
        history = [GanEpoch(**h) for h in resume["history"]]
        set_rng_state(resume["rng"])
        start = resume["epoch"] + 1
        log.info("resuming the GAN from %s after epoch %d", checkpoint_path, start)

    step = start * ((len(real) + plan.batch_size - 1) // plan.batch_size)
    for epoch in range(start, plan.epochs):
        t0 = time.perf_counter()
        generator.train()
        discriminator.train()
        gen = epoch_generator(plan.seed, epoch, 3, device)
        order = epoch_order(len(real), plan.seed, epoch)
        sums = {"d_loss": 0.0, "g_loss": 0.0, "d_real": 0.0, "d_fake": 0.0}
        batches = list(shard(order, plan.batch_size, 0, 1, drop_last=len(real) >= plan.batch_size))
        for i, idx in enumerate(tqdm(batches, desc=f"GAN epoch {epoch + 1}/{plan.epochs}", leave=False, disable=not progress)):
            x_real = to_log_space(real.gather(idx).dense(channels_last=True).to(device), scale)
            b = x_real.shape[0]
            for _ in range(plan.n_critic):
                z = torch.randn(b, latent, generator=gen, device=device)
                with torch.no_grad():
                    x_fake = generator(z, gen)
                s_real, s_fake = discriminator(x_real), discriminator(x_fake)
                d_loss = hinge_d_loss(s_real, s_fake)
                check_finite(d_loss, epoch, i, checkpoint_path)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            z = torch.randn(b, latent, generator=gen, device=device)
            g_loss = hinge_g_loss(discriminator(generator(z, gen)))
            check_finite(g_loss, epoch, i, checkpoint_path)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            values = {
                "d_loss": float(d_loss.detach()),
                "g_loss": float(g_loss.detach()),
                "d_real": float(s_real.detach().mean()),
                "d_fake": float(s_fake.detach().mean()),
            }
            for k, v in values.items():
                sums[k] += v
            step += 1
            if on_step is not None:
                on_step(step, values)
        n = max(len(batches), 1)
        record = GanEpoch(
            epoch + 1, sums["d_loss"] / n, sums["g_loss"] / n, sums["d_real"] / n, sums["d_fake"] / n, time.perf_counter() - t0
        )
        history.append(record)
        log.info(
            "GAN epoch %d/%d  D loss %.3f  G loss %.3f  D(real) %.3f  D(fake) %.3f  %.1fs",
            record.epoch,
            plan.epochs,
            record.d_loss,
            record.g_loss,
            record.d_real,
            record.d_fake,
            record.seconds,
        )
        if on_epoch is not None:
            on_epoch(record)
        save_checkpoint(
            checkpoint_path,
            {
                "fingerprint": fingerprint,
                "epoch": epoch,
                "generator": generator.state_dict(),
                "discriminator": discriminator.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "history": [asdict(h) for h in history],
                "rng": rng_state(),
            }
            | (extra_state or {}),
        )
    generator.eval()
    return history


@torch.no_grad()
def sample(generator: Generator, n: int, seed: int, batch_size: int, device: torch.device) -> torch.Tensor:
    """``n`` generated jets (raw GeV, (n, C, H, W)) from ``seed``: the same seed, the same jets."""
    generator.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for lo in range(0, n, batch_size):
        z = torch.randn(min(batch_size, n - lo), generator.config.latent_dim, generator=gen, device=device)
        out.append(generator.energies(z, gen).cpu())
    return torch.cat(out) if out else torch.zeros(0)
