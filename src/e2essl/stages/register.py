"""Stage ``register``: put every model the pipeline holds into the MLflow registry, and set aliases.

Runs whenever a model output changes, so the registry agrees with the outputs DVC tracks whether a
training stage ran just now or was restored from DVC's run cache (its own output is uncached, so it
is never restored without running; after deleting mlruns/, ``dvc repro -f register``).
Registration is idempotent: a version is identified by its weights' SHA-256, so nothing is ever
registered twice.

=========================  ===========================================  ===========================
registered model           from                                         ``champion`` alias
=========================  ===========================================  ===========================
``e2essl-gan``             outputs/train_gan/generator.safetensors      this pipeline's generator
``e2essl-ssl-encoder``     outputs/pretrain/encoder.safetensors         this pipeline's encoder
``e2essl-scratch``         outputs/scratch/*/model.safetensors          best validation ROC AUC
``e2essl-finetuned``       outputs/finetune/*/model.safetensors         (among versions scored on
``e2essl-linear-probe``    outputs/linear_probe/*/model.safetensors     the same validation split)
=========================  ===========================================  ===========================

Each model is logged into the MLflow run that trained it (found through its ``history.json``)
when that run is in the store, else into this stage's run. Version tags: arm, label fraction, seed,
validation AUC, best epoch, the validation split's hash.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from e2essl.checkpoint import file_sha256, load_weights
from e2essl.config import Params
from e2essl.data.writers import write_json
from e2essl.stages.common import Prepared, StageEnv, require_single_process

log = logging.getLogger(__name__)

CLASSIFIER_NAMES = {"scratch": "e2essl-scratch", "finetune": "e2essl-finetuned", "linear_probe": "e2essl-linear-probe"}
GAN_NAME, ENCODER_NAME = "e2essl-gan", "e2essl-ssl-encoder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outputs", default="outputs", help="folder holding the stage outputs (default: %(default)s)")
    parser.add_argument("--prepared", default="outputs/prepare", help="prepare stage output (default: %(default)s)")
    parser.add_argument("--out", default="outputs/register/registry.json", help="what was registered (default: %(default)s)")


def _history_run_id(weights: Path) -> str | None:
    history = weights.parent / "history.json"
    if not history.exists():
        return None
    return json.loads(history.read_text()).get("mlflow_run_id")


def collect(outputs: Path, params: Params) -> list[dict]:
    """Every model of the current pipeline: name, kind, weights, tags, the run that trained it."""
    models = []
    generator = outputs / "train_gan" / "generator.safetensors"
    if generator.exists():
        models.append({"name": GAN_NAME, "kind": "generator", "weights": generator, "tags": {}})
    encoder = outputs / "pretrain" / "encoder.safetensors"
    if encoder.exists():
        _, meta = load_weights(encoder)
        knn = meta.get("knn_val_auc")
        models.append(
            {"name": ENCODER_NAME, "kind": "encoder", "weights": encoder, "tags": {"method": meta.get("method"), "knn_val_auc": knn}}
        )
    for arm, name in CLASSIFIER_NAMES.items():
        for weights in sorted((outputs / arm).glob("*/model.safetensors")):
            _, meta = load_weights(weights)
            f, seed = meta.get("label_fraction"), meta.get("seed")
            if f not in params.study.fractions or seed not in params.study.seeds:
                continue  # left over from an older study matrix
            tags = {
                "arm": arm,
                "label_fraction": f"{f:g}",
                "seed": seed,
                "val_auc": f"{meta['val_auc']:.6f}",
                "best_epoch": meta.get("best_epoch"),
                "train_jets": meta.get("train_jets"),
            }
            models.append({"name": name, "kind": "classifier", "weights": weights, "tags": tags})
    for m in models:
        m["run_id"] = _history_run_id(m["weights"])
    return models


def run(args: argparse.Namespace, params: Params) -> None:
    require_single_process("register")
    from e2essl.tracking import CHAMPION, image_signature, latent_signature, register_model, set_alias, set_champion

    env = StageEnv.create(params)
    models = collect(Path(args.outputs), params)
    val_split = Prepared(Path(args.prepared)).split_path("val")
    val_hash = file_sha256(val_split)[:16] if val_split.exists() else "unknown"
    size, c = params.data.image_size, params.data.channels
    registered = []
    with env.run("register", ["tracking"]) as run:
        if not params.tracking.register_models or not run.enabled:
            log.info("register: tracking.register_models is off; nothing registered")
        else:
            for m in models:
                if m["kind"] == "generator":
                    _, meta = load_weights(m["weights"])
                    signature = latent_signature(meta["model"]["latent_dim"], (size, size, c))
                elif m["kind"] == "encoder":
                    signature = image_signature((size, size, c), (32,))
                else:
                    signature = image_signature((size, size, c), ())
                    m["tags"]["val_split"] = val_hash
                version = register_model(m["name"], m["kind"], m["weights"], m["tags"], signature, m["run_id"], fallback_run_id=run.run_id)
                registered.append(
                    {"name": m["name"], "version": version, "weights": str(m["weights"]), **{k: str(v) for k, v in m["tags"].items()}}
                )
                if m["kind"] in ("generator", "encoder"):
                    set_alias(m["name"], CHAMPION, version)
            for name in sorted({m["name"] for m in models if m["kind"] == "classifier"}):
                set_champion(name, "val_auc", where={"val_split": val_hash})
            run.log_metrics({"registered_models": len(registered)})
    write_json(args.out, {"tracking_uri_env": "MLFLOW_TRACKING_URI or <project>/mlruns/mlflow.db", "models": registered})
    log.info("register: %d model versions in the registry", len(registered))
