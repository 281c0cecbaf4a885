"""What every training loop shares: device, seeding, schedules, the NaN guard, scoring."""

from __future__ import annotations

import contextlib
import logging
import math
import random

import numpy as np
import torch

from e2essl.data.preprocess import Normaliser
from e2essl.data.sparse import DenseBuffer, SparseJets, hash_seed
from e2essl.errors import TrainingError

log = logging.getLogger(__name__)


def pick_device(setting: str, local_rank: int = 0) -> torch.device:
    """'auto' takes CUDA when present; 'cuda' without a GPU is an error."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise TrainingError("base.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if setting in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def generator(seed: int, device: torch.device) -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)


def epoch_generator(seed: int, epoch: int, stream: int, device: torch.device) -> torch.Generator:
    """Random numbers for one epoch's augmentations: a pure function of (seed, epoch, stream)."""
    return generator(hash_seed(seed, epoch, stream), device)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning-rate schedule: cosine to zero, step (halve at 1/3 and 2/3 of the run, as the
    original ResNet-15 recipe halves at epochs 10 and 20 of 30), or constant."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if schedule == "step":
        milestones = sorted({max(1, round(epochs / 3)), max(1, round(2 * epochs / 3))})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.5)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def check_finite(loss: torch.Tensor, epoch: int, step: int, checkpoint: str) -> None:
    """Stop on a NaN/inf loss, naming where it happened and what is kept."""
    if not torch.isfinite(loss).all():
        from pathlib import Path

        kept = f"the last good checkpoint is kept at {checkpoint}" if Path(checkpoint).exists() else "no checkpoint had been written yet"
        raise TrainingError(
            f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; training stopped and {kept} "
            "(lower the learning rate or check the inputs)"
        )


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled; nothing on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_model_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Channels-last memory format: about 1.2x faster ResNet-15 steps on CPU here (benchmarks/results.md)."""
    return x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    jets: SparseJets,
    normaliser: Normaliser,
    batch_size: int,
    device: torch.device,
    features: bool = False,
    mixed_precision: bool = False,
) -> torch.Tensor:
    """Logits (N,) of a classifier (or its (N, 32) features) over all jets, in eval mode."""
    was_training = model.training
    model.eval()
    out, buffer = [], DenseBuffer()
    for lo in range(0, len(jets), batch_size):
        idx = torch.arange(lo, min(lo + batch_size, len(jets)))
        x = to_model_input(normaliser(jets.gather(idx), buffer), device)
        with autocast(device, mixed_precision):
            y = model.features(x) if features else model(x)
        out.append(y.float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def cosine_warmup(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay, as a factor of the base learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
