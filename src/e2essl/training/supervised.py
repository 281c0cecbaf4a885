"""The supervised loop every classifier arm uses (scratch, finetune, linear probe), top to bottom.

Per epoch: shuffle (a pure function of seed and epoch), optional exact-grid augmentation,
BCE-with-logits, Adam, gradient clipping, a per-epoch learning-rate schedule; then score the
validation split, keep the best epoch by validation ROC AUC (the only selection rule), and write a
checkpoint. Rerunning with the same checkpoint path resumes after the last completed epoch and
ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from e2essl.augment import GEOMETRIC, augment
from e2essl.checkpoint import rng_state, save_checkpoint, set_rng_state
from e2essl.data.preprocess import Normaliser
from e2essl.data.sparse import DenseBuffer, SparseBatch, SparseJets, epoch_order, global_batches, rank_positions
from e2essl.distributed import Dist, sum_scalar
from e2essl.metrics import classifier_metrics
from e2essl.training.common import autocast, check_finite, epoch_generator, make_scheduler, predict_logits, to_model_input

log = logging.getLogger(__name__)


@dataclass
class SupervisedPlan:
    """The budget and rules of one supervised run."""

    epochs: int
    batch_size: int
    schedule: str
    seed: int  # data order and augmentation
    augment: bool = True
    grad_clip: float = 0.0
    weight_decay: float = 0.0
    # Epochs with the encoder frozen at the start (finetuning warm-up); all of them for a linear probe.
    frozen_epochs: int = 0
    # An epoch makes at least this many optimiser steps: small label fractions pass over their jets
    # several times per epoch instead of training for a handful of steps in all.
    min_steps_per_epoch: int = 1
    mixed_precision: bool = False


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    val_auc: float
    val_accuracy: float
    lr: float
    seconds: float


@dataclass
class SupervisedResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_auc: float
    history: list[EpochRecord] = field(default_factory=list)

    def history_dicts(self) -> list[dict]:
        return [asdict(r) for r in self.history]


def _set_encoder_trainable(model: nn.Module, trainable: bool) -> None:
    for p in model.encoder_parameters():
        p.requires_grad_(trainable)


def supervised_loss(
    net: nn.Module,
    batch: SparseBatch,
    labels: torch.Tensor,
    normaliser: Normaliser,
    device: torch.device,
    dist: Dist,
    mixed_precision: bool = False,
    buffer: DenseBuffer | None = None,
) -> torch.Tensor:
    """BCE-with-logits of this rank's share of a global batch (B jets, ``labels`` (B,)).

    The sum over the share, times world / B: DDP's gradient average then equals the gradient of
    the mean BCE over the global batch in one process. ``buffer`` takes the dense input (reused
    from step to step; see :class:`~e2essl.data.sparse.DenseBuffer`).
    """
    mine = rank_positions(batch.size, dist.rank, dist.world)
    x = to_model_input(normaliser(batch.take_jets(mine), buffer), device)  # (b, C, H, W)
    y = labels[mine].to(device).float()  # (b,)
    with autocast(device, mixed_precision):
        logits = net(x)  # (b,)
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), y, reduction="sum") * (dist.world / batch.size)


def train_epoch(
    net: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: SparseJets,
    normaliser: Normaliser,
    plan: SupervisedPlan,
    epoch: int,
    device: torch.device,
    dist: Dist,
    checkpoint_path: str = "(no checkpoint)",
    progress: bool = False,
    buffer: DenseBuffer | None = None,
) -> float:
    """One epoch over ``train`` (``net`` may be the DDP wrapper of ``model``); the mean training loss.

    An epoch is as many shuffled passes over the jets as it takes to make ``plan.min_steps_per_epoch``
    optimiser steps (one pass for all but small subsets). ``buffer`` receives each step's dense
    input (a run passes the same one to every epoch; a new one when None).
    """
    gen = epoch_generator(plan.seed, epoch, 1, device)
    buffer = buffer or DenseBuffer()
    total_loss, total_n = 0.0, 0
    per_pass = -(-len(train) // plan.batch_size)
    passes = max(1, -(-plan.min_steps_per_epoch // per_pass))
    batches = [
        idx
        for p in range(passes)
        for idx in global_batches(epoch_order(len(train), plan.seed, epoch * passes + p), plan.batch_size, drop_last=False)
    ]
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{plan.epochs}", unit="batch", leave=False, disable=not (progress and dist.is_main))
    for step, idx in enumerate(bar):
        # Augment the whole global batch (one random stream for every rank); each rank then
        # trains on its share, so the run does not depend on the number of ranks.
        batch = train.gather(idx)
        if plan.augment:
            batch = augment(batch, GEOMETRIC, gen)
        loss = supervised_loss(net, batch, train.labels[idx], normaliser, device, dist, plan.mixed_precision, buffer)
        check_finite(loss, epoch, step, checkpoint_path)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if plan.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), plan.grad_clip)
        optimizer.step()
        total_loss += float(loss.detach()) * len(idx) / dist.world  # this rank's summed BCE
        total_n += len(idx)
        bar.set_postfix(loss=f"{total_loss * dist.world / max(total_n, 1):.4f}")
    return sum_scalar(total_loss, dist) / max(total_n, 1)


def train_supervised(
    model: nn.Module,
    param_groups: list[dict],
    train: SparseJets,
    val: SparseJets,
    normaliser: Normaliser,
    plan: SupervisedPlan,
    device: torch.device,
    checkpoint_path: str,
    fingerprint: str,
    resume: dict | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    dist: Dist | None = None,
    progress: bool = True,
    extra_state: dict | None = None,
) -> SupervisedResult:
    """Train ``model`` on ``train``, select on ``val``; see the module docstring.

    ``resume`` is a checkpoint loaded with :func:`~e2essl.checkpoint.load_checkpoint` (None starts
    afresh); ``extra_state`` is stored in every checkpoint (the MLflow run id, for instance).
    """
    dist = dist or Dist()
    probe_only = plan.frozen_epochs >= plan.epochs
    _set_encoder_trainable(model, not probe_only)
    # A warm-up with a frozen encoder leaves encoder gradients unused for a while; DDP must know.
    ddp_model = (
        nn.parallel.DistributedDataParallel(model, find_unused_parameters=0 < plan.frozen_epochs < plan.epochs) if dist.enabled else model
    )
    optimizer = torch.optim.Adam(param_groups, weight_decay=plan.weight_decay)
    scheduler = make_scheduler(optimizer, plan.schedule, plan.epochs)
    val_labels = val.labels.numpy()
    best_state, best_epoch, best_auc, history = copy.deepcopy(model.state_dict()), 0, -1.0, []
    start_epoch = 0

    state = resume
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        best_state, best_epoch, best_auc = state["best_state"], state["best_epoch"], state["best_val_auc"]
        history = [EpochRecord(**h) for h in state["history"]]
        set_rng_state(state["rng"])
        start_epoch = state["epoch"] + 1
        log.info("resuming from %s after epoch %d", checkpoint_path, start_epoch)

    buffer = DenseBuffer()  # every step's dense input is written into the same memory
    for epoch in range(start_epoch, plan.epochs):
        t0 = time.perf_counter()
        _set_encoder_trainable(model, epoch >= plan.frozen_epochs)
        ddp_model.train()
        train_loss = train_epoch(
            ddp_model, model, optimizer, train, normaliser, plan, epoch, device, dist, checkpoint_path, progress, buffer
        )
        lr = optimizer.param_groups[-1]["lr"]
        scheduler.step()

        val_probs = torch.sigmoid(predict_logits(model, val, normaliser, 256, device, mixed_precision=plan.mixed_precision)).numpy()
        val_metrics = classifier_metrics(val_labels, val_probs)
        record = EpochRecord(
            epoch + 1,
            train_loss,
            val_metrics["loss"],
            val_metrics["roc_auc"],
            val_metrics["accuracy"],
            lr,
            time.perf_counter() - t0,
        )
        history.append(record)
        if record.val_auc > best_auc:
            best_auc, best_epoch = record.val_auc, record.epoch
            best_state = copy.deepcopy(model.state_dict())
        log.info(
            "epoch %d/%d  train loss %.4f  val loss %.4f  val AUC %.4f  val acc %.4f  lr %.2e  %.1fs",
            record.epoch,
            plan.epochs,
            record.train_loss,
            record.val_loss,
            record.val_auc,
            record.val_accuracy,
            lr,
            record.seconds,
        )
        if on_epoch is not None and dist.is_main:
            on_epoch(record)
        if dist.is_main:
            save_checkpoint(
                checkpoint_path,
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "best_state": best_state,
                    "best_epoch": best_epoch,
                    "best_val_auc": best_auc,
                    "history": [asdict(h) for h in history],
                    "rng": rng_state(),
                }
                | (extra_state or {}),
            )
    _set_encoder_trainable(model, True)
    return SupervisedResult(best_state, best_epoch, float(best_auc), history)


def score(model: nn.Module, jets: SparseJets, normaliser: Normaliser, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Quark probabilities (N,) for every jet."""
    return torch.sigmoid(predict_logits(model, jets, normaliser, batch_size, device)).numpy()
