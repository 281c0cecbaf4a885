"""Stages ``scratch``, ``finetune`` and ``linear_probe``: one ResNet-15 per (label fraction, seed).

The three arms share everything but the initialisation and which weights train:

=============  ======================  ===========================================================
arm            initialisation          trained, learning rate
=============  ======================  ===========================================================
scratch        random                  everything, ``scratch.lr``
finetune       pretrained encoder      encoder at ``finetune.encoder_lr`` (frozen for the first
               + new head              ``finetune.frozen_epochs``), head at ``finetune.head_lr``
linear_probe   pretrained encoder      head only, ``linear_probe.lr``
               + new head
=============  ======================  ===========================================================

Same training subset, validation split, epochs, batch size, schedule, augmentation, data order
and head initialisation (both seeded from ``base.seed`` and the matrix seed), and the same
selection rule: the epoch with the best validation ROC AUC. Outputs per run: ``model.safetensors``
(the selected weights, self-describing) and ``history.json`` (per-epoch curves, selected epoch,
the MLflow run id). The ``register`` stage puts the model into the MLflow registry.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from e2essl.checkpoint import file_sha256, fingerprint, load_checkpoint, load_weights, remove_checkpoint, save_weights
from e2essl.config import Params
from e2essl.data.sparse import hash_seed
from e2essl.data.writers import write_json
from e2essl.errors import TrainingError
from e2essl.models import ResNet15
from e2essl.stages.common import Prepared, StageEnv
from e2essl.training.supervised import EpochRecord, SupervisedPlan, train_supervised

log = logging.getLogger(__name__)

ENCODER_DEFAULT = "outputs/pretrain/encoder.safetensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fraction", type=float, required=True, help="label fraction of the training split (0 < f <= 1)")
    parser.add_argument("--seed", type=int, required=True, help="the matrix seed (data order, initialisation)")
    parser.add_argument("--prepared", default="outputs/prepare", help="prepare stage output (default: %(default)s)")
    parser.add_argument("--out", required=True, help="output folder for this run")
    parser.add_argument("--checkpoints", default="checkpoints", help="folder for resumable checkpoints (default: %(default)s)")
    parser.add_argument(
        "--encoder", default=ENCODER_DEFAULT, help="pretrained encoder weights (finetune, linear_probe; default: %(default)s)"
    )


add_scratch_arguments = add_finetune_arguments = add_linear_probe_arguments = add_arguments


def run_scratch(args: argparse.Namespace, params: Params) -> None:
    run_arm("scratch", args, params)


def run_finetune(args: argparse.Namespace, params: Params) -> None:
    run_arm("finetune", args, params)


def run_linear_probe(args: argparse.Namespace, params: Params) -> None:
    run_arm("linear_probe", args, params)


def run_name(fraction: float, seed: int) -> str:
    """Folder and checkpoint name of one matrix entry, e.g. ``f0.1_s2``."""
    return f"f{fraction:g}_s{seed}"


def encoder_source(params: Params, default_path: str) -> Path:
    """The encoder weights file: the pretrain stage's output, or a registered model's weights."""
    if params.finetune.encoder == "stage":
        return Path(default_path)
    from e2essl.tracking import model_weights

    return model_weights(params.finetune.encoder)


def load_encoder(model: ResNet15, path: Path) -> None:
    """Load pretrained encoder weights into ``model``: every encoder key must match; only the head is new."""
    state, meta = load_weights(path)
    if meta.get("kind") != "encoder":
        raise TrainingError(f"{path}: holds a {meta.get('kind', 'unknown')!r} model, expected a pretrained encoder")
    if meta["model"]["in_channels"] != model.config.in_channels:
        raise TrainingError(f"{path}: encoder takes {meta['model']['in_channels']} channels, data.channels is {model.config.in_channels}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise TrainingError(f"{path}: encoder weights do not fit ResNet-15 (missing {missing}, unexpected {unexpected})")


def build_model(arm: str, params: Params, encoder_path: Path | None, init_seed: int) -> tuple[ResNet15, list[dict], int]:
    """(model, optimiser parameter groups, epochs with the encoder frozen) for an arm."""
    torch.manual_seed(init_seed)  # the same random head (and, for scratch, body) in every arm
    model = ResNet15(params.data.channels, batchnorm=params.supervised.batchnorm)
    head = list(model.head.parameters())
    if arm == "scratch":
        return model, [{"params": list(model.parameters()), "lr": params.scratch.lr}], 0
    assert encoder_path is not None
    load_encoder(model, encoder_path)
    if arm == "finetune":
        groups = [{"params": model.encoder_parameters(), "lr": params.finetune.encoder_lr}, {"params": head, "lr": params.finetune.head_lr}]
        return model, groups, params.finetune.frozen_epochs
    return model, [{"params": head, "lr": params.linear_probe.lr}], params.supervised.epochs


def run_arm(arm: str, args: argparse.Namespace, params: Params) -> None:
    """Train one arm for one (fraction, seed), save, register; see the module docstring."""
    if not 0 < args.fraction <= 1:
        raise TrainingError(f"--fraction must be in (0, 1], got {args.fraction}")
    env = StageEnv.create(params)
    prepared = Prepared(Path(args.prepared))
    out = Path(args.out)
    sup = params.supervised
    normaliser = prepared.normaliser(params.data.preprocess)
    train = prepared.load("train", args.fraction, params.data.memory_budget_gb).to(env.device)
    val = prepared.load("val", 1.0, params.data.memory_budget_gb).to(env.device)
    if len(train) < sup.batch_size:
        log.warning(
            "the %g label fraction has %d training jets, fewer than supervised.batch_size (%d): one batch per epoch",
            args.fraction,
            len(train),
            sup.batch_size,
        )

    encoder_path = None if arm == "scratch" else encoder_source(params, args.encoder)
    data_seed = hash_seed(params.base.seed, args.seed)
    model, groups, frozen = build_model(arm, params, encoder_path, hash_seed(params.base.seed, args.seed, 1))
    model = model.to(env.device).to(memory_format=torch.channels_last)
    plan = SupervisedPlan(
        epochs=sup.epochs,
        batch_size=sup.batch_size,
        min_steps_per_epoch=sup.min_steps_per_epoch,
        schedule=sup.schedule,
        seed=data_seed,
        augment=sup.augment,
        grad_clip=sup.grad_clip,
        weight_decay=sup.weight_decay,
        frozen_epochs=frozen,
        mixed_precision=params.base.mixed_precision,
    )
    sections = ["study", "supervised", arm] if arm == "scratch" else ["study", "supervised", arm, "finetune"]
    dump = params.model_dump(mode="json")
    inputs = [file_sha256(prepared.split_path(s)) for s in ("train", "val")] + [file_sha256(prepared.normalisation)]
    if encoder_path is not None:
        inputs.append(file_sha256(encoder_path))
    fp = fingerprint(arm, args.fraction, args.seed, {k: dump[k] for k in ["base", "data", *sections]}, inputs)
    ckpt_path = Path(args.checkpoints) / arm / f"{run_name(args.fraction, args.seed)}.pt"
    resume = load_checkpoint(ckpt_path, fp)

    with env.run(arm, sections, resume_run_id=resume.get("mlflow_run_id") if resume else None) as run:
        run.set_tags({"arm": arm, "label_fraction": args.fraction, "seed": args.seed, "train_jets": len(train)})

        def on_epoch(r: EpochRecord) -> None:
            run.log_metrics(
                {"train_loss": r.train_loss, "val_loss": r.val_loss, "val_auc": r.val_auc, "val_accuracy": r.val_accuracy, "lr": r.lr},
                step=r.epoch,
            )

        result = train_supervised(
            model,
            groups,
            train,
            val,
            normaliser,
            plan,
            env.device,
            str(ckpt_path),
            fp,
            resume=resume,
            on_epoch=on_epoch,
            dist=env.dist,
            progress=env.progress,
            extra_state={"mlflow_run_id": str(run.run_id)},
        )
        if not env.dist.is_main:
            return
        model.load_state_dict(result.best_state)
        h = params.data.image_size
        meta = {
            "kind": "classifier",
            "arm": arm,
            "model": model.config.to_dict(),
            "normaliser": normaliser.to_dict(),
            "image_size": h,
            "label_fraction": args.fraction,
            "seed": args.seed,
            "train_jets": len(train),
            "best_epoch": result.best_epoch,
            "val_auc": result.best_val_auc,
        }
        save_weights(out / "model.safetensors", model.state_dict(), meta)
        write_json(
            out / "history.json",
            {
                "arm": arm,
                "label_fraction": args.fraction,
                "seed": args.seed,
                "train_jets": len(train),
                "best_epoch": result.best_epoch,
                "best_val_auc": result.best_val_auc,
                "mlflow_run_id": run.run_id,
                "epochs": result.history_dicts(),
            },
        )
        run.log_metrics({"best_val_auc": result.best_val_auc, "best_epoch": result.best_epoch})
        run.log_artifact(out / "history.json")
    remove_checkpoint(ckpt_path)
    log.info(
        "%s f=%g seed=%d: best val AUC %.4f at epoch %d -> %s", arm, args.fraction, args.seed, result.best_val_auc, result.best_epoch, out
    )
