"""The self-supervised loop (Barlow Twins or VICReg), top to bottom.

Per step: two augmented views of each jet (e2essl.augment, random per jet), preprocessing, the
ResNet-15 encoder and the projector on both, the joint-embedding loss in float32, AdamW with a
linear warm-up and cosine decay per step. Per epoch: label-free monitors (effective rank of the
encoder features and of the embeddings on a fixed set of jets), every ``monitor_every`` epochs a
kNN ROC AUC of the encoder features on the labelled validation split, and a checkpoint. The
encoder handed on is the last epoch's: no labels are used to choose it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from e2essl.augment import augment
from e2essl.checkpoint import rng_state, save_checkpoint, set_rng_state
from e2essl.config import Augment
from e2essl.data.preprocess import Normaliser
from e2essl.data.sparse import DenseBuffer, SparseBatch, SparseJets, epoch_order, global_batches, rank_positions
from e2essl.distributed import Dist
from e2essl.losses import LossTerms, barlow_twins_loss, vicreg_loss
from e2essl.metrics import effective_rank, knn_auc
from e2essl.training.common import autocast, check_finite, cosine_warmup, epoch_generator, predict_logits, to_model_input

log = logging.getLogger(__name__)


@dataclass
class PretrainPlan:
    method: str  # barlow_twins | vicreg
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    offdiag_weight: float | None = None
    vicreg_weights: tuple[float, float, float] = (25.0, 25.0, 1.0)
    monitor_every: int = 1
    knn_k: int = 20
    warmup_fraction: float = 0.1
    grad_clip: float = 0.0
    mixed_precision: bool = False


@dataclass
class PretrainEpoch:
    epoch: int  # 1-based
    loss: float
    terms: dict[str, float]
    rank_features: float  # effective rank of the 32-d encoder features (max 32)
    rank_embeddings: float  # ... and of the projector output
    knn_val_auc: float | None
    seconds: float


@dataclass
class Monitor:
    """Jets for the monitors: fixed unlabelled jets; labelled bank and validation jets for the kNN."""

    unlabelled: SparseJets
    bank: SparseJets | None = None
    val: SparseJets | None = None


class SiameseModel(nn.Module):
    """Encoder + projector applied to both views in one forward call, so that one DDP wrapper covers
    both (DDP supports one forward per backward; Barlow Twins' reference code does the same)."""

    def __init__(self, encoder: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.encoder, self.projector = encoder, projector
        # The classifier head takes no part in pretraining; a parameter DDP expects a gradient for
        # and never gets one would leave its gradient bucket unreduced.
        for p in encoder.head.parameters():
            p.requires_grad_(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder.features(x))  # (B, D)

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Separate passes: each view's BatchNorm statistics are its own, as in the paper.
        return self.embed(x_a), self.embed(x_b)


def joint_embedding_loss(z_a: torch.Tensor, z_b: torch.Tensor, plan: PretrainPlan, dist: Dist) -> LossTerms:
    if plan.method == "barlow_twins":
        return barlow_twins_loss(z_a, z_b, plan.offdiag_weight, dist)
    return vicreg_loss(z_a, z_b, *plan.vicreg_weights, dist=dist)


@torch.no_grad()
def monitors(
    model: SiameseModel, normaliser: Normaliser, mon: Monitor, device: torch.device, with_knn: bool, k: int
) -> tuple[float, float, float | None]:
    model.eval()
    feats = predict_logits(model.encoder, mon.unlabelled, normaliser, 256, device, features=True)
    emb = model.projector(feats.to(device)).cpu()
    knn = None
    if with_knn and mon.bank is not None and mon.val is not None:
        bank = predict_logits(model.encoder, mon.bank, normaliser, 256, device, features=True)
        val = predict_logits(model.encoder, mon.val, normaliser, 256, device, features=True)
        knn = knn_auc(bank, mon.bank.labels.cpu(), val, mon.val.labels.cpu(), k)
    model.train()
    return effective_rank(feats), effective_rank(emb), knn


def ssl_loss(
    net: nn.Module,
    batch: SparseBatch,
    views: Augment,
    gen: torch.Generator,
    normaliser: Normaliser,
    plan: PretrainPlan,
    device: torch.device,
    dist: Dist,
    buffers: tuple[DenseBuffer, DenseBuffer] | None = None,
) -> LossTerms:
    """The joint-embedding loss of one global batch, this rank's share of the forward pass.

    Every rank draws both views of the whole global batch from the same stream and keeps its own
    jets', so the views (and the run) do not depend on the number of ranks. ``buffers`` take the
    two dense views (reused from step to step; see :class:`~e2essl.data.sparse.DenseBuffer`).
    """
    buf_a, buf_b = buffers or (None, None)
    mine = rank_positions(batch.size, dist.rank, dist.world)
    view_a, view_b = augment(batch, views, gen).take_jets(mine), augment(batch, views, gen).take_jets(mine)
    x_a = to_model_input(normaliser(view_a, buf_a), device)  # (b, C, H, W)
    x_b = to_model_input(normaliser(view_b, buf_b), device)
    with autocast(device, plan.mixed_precision):
        z_a, z_b = net(x_a, x_b)  # (b, D) each
    return joint_embedding_loss(z_a, z_b, plan, dist)


def pretrain_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    jets: SparseJets,
    normaliser: Normaliser,
    views: Augment,
    plan: PretrainPlan,
    epoch: int,
    device: torch.device,
    dist: Dist,
    checkpoint_path: str = "(no checkpoint)",
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = False,
    buffers: tuple[DenseBuffer, DenseBuffer] | None = None,
) -> tuple[float, dict[str, float]]:
    """One pass over ``jets``: the mean loss and mean loss terms. ``buffers`` receive the two dense
    views of each step (a run passes the same pair to every epoch; a new pair when None)."""
    gen = epoch_generator(plan.seed, epoch, 2, device)
    order = epoch_order(len(jets), plan.seed, epoch)
    batches = list(global_batches(order, plan.batch_size, drop_last=len(jets) >= plan.batch_size))
    steps_per_epoch = len(batches)
    buffers = buffers or (DenseBuffer(), DenseBuffer())
    loss_sum, term_sums = 0.0, {}
    bar = tqdm(
        batches, desc=f"pretrain epoch {epoch + 1}/{plan.epochs}", unit="batch", leave=False, disable=not (progress and dist.is_main)
    )
    for step, idx in enumerate(bar):
        terms = ssl_loss(net, jets.gather(idx), views, gen, normaliser, plan, device, dist, buffers)
        check_finite(terms.loss, epoch, step, checkpoint_path)
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        if plan.grad_clip > 0:
            nn.utils.clip_grad_norm_(net.parameters(), plan.grad_clip)
        optimizer.step()
        scheduler.step()
        loss_sum += float(terms.loss.detach())
        for k, v in terms.parts.items():
            term_sums[k] = term_sums.get(k, 0.0) + float(v)
        bar.set_postfix(loss=f"{loss_sum / (step + 1):.3f}")
        if on_step is not None and dist.is_main:
            values = {"loss": float(terms.loss.detach()), **{k: float(v) for k, v in terms.parts.items()}, "lr": scheduler.get_last_lr()[0]}
            on_step(epoch * steps_per_epoch + step + 1, values)
    n = max(len(batches), 1)
    return loss_sum / n, {k: v / n for k, v in term_sums.items()}


def train_ssl(
    model: SiameseModel,
    jets: SparseJets,
    normaliser: Normaliser,
    views: Augment,
    plan: PretrainPlan,
    device: torch.device,
    monitor: Monitor,
    checkpoint_path: str,
    fingerprint: str,
    resume: dict | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_epoch: Callable[[PretrainEpoch], None] | None = None,
    dist: Dist | None = None,
    progress: bool = True,
    extra_state: dict | None = None,
) -> list[PretrainEpoch]:
    """Pretrain ``model`` on ``jets``; returns the per-epoch history (see the module docstring)."""
    dist = dist or Dist()
    net = nn.parallel.DistributedDataParallel(model) if dist.enabled else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=plan.lr, weight_decay=plan.weight_decay)
    total = plan.epochs * ((len(jets) // plan.batch_size) if len(jets) >= plan.batch_size else 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_warmup(s, total, max(1, int(plan.warmup_fraction * total))))
    history: list[PretrainEpoch] = []
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        history = [PretrainEpoch(**h) for h in resume["history"]]
        set_rng_state(resume["rng"])
        start = resume["epoch"] + 1
        log.info("resuming pretraining from %s after epoch %d", checkpoint_path, start)

    buffers = DenseBuffer(), DenseBuffer()  # the two dense views of every step are written into the same memory
    for epoch in range(start, plan.epochs):
        t0 = time.perf_counter()
        net.train()
        loss, terms = pretrain_epoch(
            net, optimizer, scheduler, jets, normaliser, views, plan, epoch, device, dist, checkpoint_path, on_step, progress, buffers
        )
        with_knn = (epoch + 1) % plan.monitor_every == 0 or epoch + 1 == plan.epochs
        rank_f, rank_z, knn = monitors(model, normaliser, monitor, device, with_knn, plan.knn_k)
        record = PretrainEpoch(epoch + 1, loss, terms, rank_f, rank_z, knn, time.perf_counter() - t0)
        history.append(record)
        log.info(
            "pretrain epoch %d/%d  loss %.4f  %s  rank(features) %.1f  rank(embeddings) %.1f  kNN val AUC %s  %.1fs",
            record.epoch,
            plan.epochs,
            record.loss,
            "  ".join(f"{k} {v:.3f}" for k, v in record.terms.items()),
            rank_f,
            rank_z,
            "-" if knn is None else f"{knn:.4f}",
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
                    "history": [asdict(h) for h in history],
                    "rng": rng_state(),
                }
                | (extra_state or {}),
            )
    return history
