"""Stage ``pretrain``: Barlow Twins (or VICReg) pretraining of the ResNet-15 encoder.

Input: the GAN-generated set (``outputs/generate/gan_jets.h5``), plus the real unlabelled pool when
``pretrain.use_real_pool`` is on. Preprocessing uses the training split's statistics (the same
the classifiers use). Monitors use labels only to be watched, never to choose the encoder: the
kNN bank is up to 2,000 jets of the training split, scored on the validation split.

Outputs: ``encoder.safetensors`` (the ResNet-15 body, self-describing) and ``history.json`` (loss
terms, monitors, the MLflow run id); the ``register`` stage registers the encoder in MLflow as
``e2essl-ssl-encoder``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from e2essl.checkpoint import file_sha256, fingerprint, load_checkpoint, remove_checkpoint, save_weights
from e2essl.config import Params
from e2essl.data.sparse import SparseJets, hash_seed
from e2essl.data.writers import write_json
from e2essl.errors import DataError
from e2essl.models import ResNet15, make_projector
from e2essl.stages.common import Prepared, StageEnv
from e2essl.stages.train_gan import load_pool
from e2essl.training.pretrain import Monitor, PretrainEpoch, PretrainPlan, SiameseModel, train_ssl

log = logging.getLogger(__name__)
MONITOR_JETS = 512
KNN_BANK = 2000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default="outputs/generate/gan_jets.h5", help="GAN-generated jets (default: %(default)s)")
    parser.add_argument("--prepared", default="outputs/prepare", help="prepare stage output (default: %(default)s)")
    parser.add_argument("--out", default="outputs/pretrain", help="output folder (default: %(default)s)")
    parser.add_argument("--checkpoints", default="checkpoints", help="folder for resumable checkpoints (default: %(default)s)")


def concat(a: SparseJets, b: SparseJets) -> SparseJets:
    """Two unlabelled sets as one."""
    offsets = torch.cat([a.offsets, b.offsets[1:] + a.offsets[-1]])
    return SparseJets(torch.cat([a.values, b.values]), torch.cat([a.pixel, b.pixel]), offsets, a.image_shape)


def run(args: argparse.Namespace, params: Params) -> None:
    env = StageEnv.create(params)
    cfg = params.pretrain
    out = Path(args.out)
    prepared = Prepared(Path(args.prepared))
    normaliser = prepared.normaliser(params.data.preprocess)
    jets = load_pool(params, Path(args.input), 10**9, env.progress)
    sources = [file_sha256(args.input)]
    if cfg.use_real_pool:
        jets = concat(jets, load_pool(params, Path(params.data.unlabelled), 10**9, env.progress))
        sources.append(file_sha256(params.data.unlabelled))
    if len(jets) < cfg.batch_size:
        raise DataError(
            args.input, f"holds {len(jets)} jets, fewer than pretrain.batch_size ({cfg.batch_size}): batch statistics need a full batch"
        )
    jets = jets.to(env.device)
    bank = prepared.load("train", 1.0, params.data.memory_budget_gb)
    bank = bank.subset(np.arange(min(KNN_BANK, len(bank))))
    monitor = Monitor(jets.subset(np.arange(min(MONITOR_JETS, len(jets)))), bank, prepared.load("val", 1.0, params.data.memory_budget_gb))

    seed = hash_seed(params.base.seed, 0x551)
    torch.manual_seed(seed)
    encoder = ResNet15(params.data.channels, batchnorm=cfg.batchnorm)
    model = SiameseModel(encoder, make_projector(ResNet15.feature_dim, cfg.projector)).to(env.device).to(memory_format=torch.channels_last)
    plan = PretrainPlan(
        method=cfg.method,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=seed,
        offdiag_weight=cfg.offdiag_weight,
        vicreg_weights=(cfg.vicreg_invariance, cfg.vicreg_variance, cfg.vicreg_covariance),
        monitor_every=cfg.monitor_every,
        knn_k=cfg.knn_k,
        grad_clip=cfg.grad_clip,
        mixed_precision=params.base.mixed_precision,
    )
    dump = params.model_dump(mode="json")
    inputs = [
        *sources,
        file_sha256(prepared.normalisation),
        file_sha256(prepared.split_path("train")),
        file_sha256(prepared.split_path("val")),
    ]
    fp = fingerprint("pretrain", {k: dump[k] for k in ("base", "data", "augment", "pretrain")}, inputs)
    ckpt_path = Path(args.checkpoints) / "pretrain" / "pretrain.pt"
    resume = load_checkpoint(ckpt_path, fp)

    with env.run("pretrain", ["augment", "pretrain"], resume_run_id=resume.get("mlflow_run_id") if resume else None) as run:
        run.set_tags({"method": cfg.method, "pretraining_jets": len(jets), "use_real_pool": cfg.use_real_pool})

        def on_step(step: int, values: dict[str, float]) -> None:
            if step % 5 == 0:
                run.log_metrics({f"step_{k}": v for k, v in values.items()}, step=step)

        def on_epoch(r: PretrainEpoch) -> None:
            values = {"loss": r.loss, "rank_features": r.rank_features, "rank_embeddings": r.rank_embeddings, **r.terms}
            if r.knn_val_auc is not None:
                values["knn_val_auc"] = r.knn_val_auc
            run.log_metrics(values, step=r.epoch)

        history = train_ssl(
            model,
            jets,
            normaliser,
            params.augment,
            plan,
            env.device,
            monitor,
            str(ckpt_path),
            fp,
            resume=resume,
            on_step=on_step,
            on_epoch=on_epoch,
            dist=env.dist,
            progress=env.progress,
            extra_state={"mlflow_run_id": str(run.run_id)},
        )
        if not env.dist.is_main:
            return
        meta = {
            "kind": "encoder",
            "model": encoder.config.to_dict(),
            "normaliser": normaliser.to_dict(),
            "image_size": params.data.image_size,
            "method": cfg.method,
            "epochs": cfg.epochs,
            "pretraining_jets": len(jets),
            "knn_val_auc": history[-1].knn_val_auc,
        }
        weights = save_weights(out / "encoder.safetensors", encoder.encoder_state_dict(), meta)
        write_json(out / "history.json", {"method": cfg.method, "mlflow_run_id": run.run_id, "epochs": [h.__dict__ for h in history]})
        run.log_artifact(out / "history.json")
    remove_checkpoint(ckpt_path)
    log.info("pretrain: %s, %d epochs on %d jets -> %s", cfg.method, cfg.epochs, len(jets), weights)
