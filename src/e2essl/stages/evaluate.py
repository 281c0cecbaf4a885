"""Stage ``evaluate``: every trained model on the untouched test split.

For each model (arm x label fraction x seed): ROC AUC with a bootstrap uncertainty, accuracy, BCE
loss and gluon rejection at 50 % quark efficiency. Outputs:

* ``metrics.json``: per model; ``summary.json``: mean and standard deviation over seeds per arm and
  label fraction (both DVC metrics files: ``dvc metrics show``, ``dvc metrics diff``);
* ``roc/<arm>_<fraction>.csv``: seed-averaged ROC curves on a common grid (``dvc plots``);
* ``auc_vs_fraction.csv``: one row per arm and fraction (``dvc plots``);
* ``predictions.npz``: every model's test-set probabilities, and ``embeddings.npz``: 2-D inputs
  for the report's embedding plot (pretrained encoder against a scratch model's encoder).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from e2essl.checkpoint import load_weights
from e2essl.config import Params
from e2essl.data.preprocess import Normaliser
from e2essl.data.writers import atomic_path, write_json, write_text
from e2essl.metrics import bootstrap_auc, classifier_metrics, roc_points
from e2essl.models import ResNet15
from e2essl.stages.common import Prepared, StageEnv, require_single_process
from e2essl.training.common import predict_logits

log = logging.getLogger(__name__)
ARMS = ("scratch", "finetune", "linear_probe")
METRICS = ("roc_auc", "accuracy", "loss", "rejection_at_50")


def fraction_label(fraction: float) -> str:
    """0.01 -> '1pct', 0.005 -> '0p5pct': a key without dots for DVC's flattened metric names."""
    return f"{100 * fraction:g}pct".replace(".", "p")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prepared", default="outputs/prepare", help="prepare stage output (default: %(default)s)")
    parser.add_argument(
        "--models", default="outputs", help="folder holding <arm>/f<fraction>_s<seed>/model.safetensors (default: %(default)s)"
    )
    parser.add_argument("--encoder", default="outputs/pretrain/encoder.safetensors", help="pretrained encoder, for the embedding plot")
    parser.add_argument("--out", default="outputs/evaluate", help="output folder (default: %(default)s)")


def find_models(models_dir: Path, params: Params) -> list[tuple[str, float, int, Path]]:
    """(arm, fraction, seed, weights) of every trained model in the current study matrix, read from
    the weights' own metadata (folders left over from an older matrix are skipped)."""
    from safetensors import safe_open

    found = []
    for arm in ARMS:
        for path in sorted((models_dir / arm).glob("*/model.safetensors")):
            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {}).get("e2essl", "{}"))
            fraction, seed = meta.get("label_fraction"), meta.get("seed")
            if meta.get("arm") == arm and fraction in params.study.fractions and seed in params.study.seeds:
                found.append((arm, float(fraction), int(seed), path))
    return sorted(found, key=lambda m: (ARMS.index(m[0]), m[1], m[2]))


def load_classifier(path: Path, device: torch.device) -> tuple[ResNet15, Normaliser, dict]:
    state, meta = load_weights(path)
    model = ResNet15.from_config(meta["model"])
    model.load_state_dict(state)
    return model.to(device).to(memory_format=torch.channels_last), Normaliser.from_dict(meta["normaliser"]), meta


def summarise(per_model: dict) -> dict:
    """Mean and sample standard deviation over seeds of each metric, per arm and fraction label."""
    summary: dict = {}
    for arm, by_fraction in per_model.items():
        for label, by_seed in by_fraction.items():
            entry = {}
            for metric in METRICS:
                values = np.array([m[metric] for m in by_seed.values()], dtype=float)
                entry[f"{metric}_mean"] = float(values.mean())
                entry[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            entry["n_seeds"] = len(by_seed)
            summary.setdefault(arm, {})[label] = entry
    return summary


def run(args: argparse.Namespace, params: Params) -> None:
    require_single_process("evaluate")
    env = StageEnv.create(params)
    prepared, out = Prepared(Path(args.prepared)), Path(args.out)
    test = prepared.load("test", 1.0, params.data.memory_budget_gb).to(env.device)
    labels = test.labels.cpu().numpy()
    models = find_models(Path(args.models), params)
    if not models:
        from e2essl.errors import E2EError

        raise E2EError(f"{args.models}: no trained models for the study matrix in params.yaml; run the training stages first")
    with env.run("evaluate", ["study", "evaluate"]) as run:
        per_model: dict = {}
        predictions: dict[str, np.ndarray] = {}
        roc_sums: dict[tuple[str, float], list[np.ndarray]] = {}
        grid = None
        for arm, fraction, seed, path in models:
            model, normaliser, meta = load_classifier(path, env.device)
            probs = torch.sigmoid(predict_logits(model, test, normaliser, params.evaluate.batch_size, env.device)).numpy()
            m = classifier_metrics(labels, probs)
            m["roc_auc_bootstrap_std"], _ = bootstrap_auc(labels, probs, params.evaluate.bootstrap, seed=params.base.seed)
            m["val_auc"] = meta.get("val_auc")
            m["best_epoch"] = meta.get("best_epoch")
            per_model.setdefault(arm, {}).setdefault(fraction_label(fraction), {})[f"seed{seed}"] = m
            predictions[f"{arm}/{fraction:g}/{seed}"] = probs.astype(np.float32)
            points = roc_points(labels, probs)
            grid = points["quark_efficiency"]
            roc_sums.setdefault((arm, fraction), []).append(np.asarray(points["gluon_efficiency"]))
            run.log_metrics({f"test_{k}/{arm}/{fraction_label(fraction)}/seed{seed}": v for k, v in m.items() if k in METRICS})
            log.info(
                "%-12s f=%-5g seed=%d  test AUC %.4f  acc %.4f  rej@50 %.1f",
                arm,
                fraction,
                seed,
                m["roc_auc"],
                m["accuracy"],
                m["rejection_at_50"],
            )
        summary = summarise(per_model)
        write_json(out / "metrics.json", per_model)
        write_json(out / "summary.json", summary)
        for (arm, fraction), curves in roc_sums.items():
            mean = np.mean(curves, axis=0)
            rows = "".join(f"{q:.4f},{g:.6f}\n" for q, g in zip(grid, mean, strict=True))
            write_text(out / "roc" / f"{arm}_{fraction_label(fraction)}.csv", "quark_efficiency,gluon_efficiency\n" + rows)
        rows = ["arm,label_fraction,roc_auc_mean,roc_auc_std\n"]
        for arm, by_fraction in summary.items():
            for fraction in params.study.fractions:
                s = by_fraction.get(fraction_label(fraction))
                if s:
                    rows.append(f"{arm},{fraction:g},{s['roc_auc_mean']:.6f},{s['roc_auc_std']:.6f}\n")
        write_text(out / "auc_vs_fraction.csv", "".join(rows))
        with atomic_path(out / "predictions.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, labels=labels, **{k.replace("/", "|"): v for k, v in predictions.items()})
        write_embeddings(out / "embeddings.npz", test, labels, models, Path(args.encoder), params, env.device)
        for arm, by_fraction in summary.items():
            for label, s in by_fraction.items():
                run.log_metrics({f"test_auc_mean/{arm}/{label}": s["roc_auc_mean"], f"test_auc_std/{arm}/{label}": s["roc_auc_std"]})
        run.log_artifact(out / "summary.json")
        run.log_artifact(out / "metrics.json")
    log.info("evaluate: %d models scored on %d test jets -> %s", len(models), len(labels), out)
    print(json.dumps(summary, indent=2))


def write_embeddings(path: Path, test, labels: np.ndarray, models, encoder: Path, params: Params, device: torch.device) -> None:
    """32-d test-set features of the pretrained encoder and of the scratch model trained on the most
    labels (seed of the first entry), for the report's 2-D projection."""
    n = min(params.report.embedding_jets, len(labels))
    idx = torch.arange(n)
    subset = test.subset(idx)
    arrays = {"labels": labels[:n]}
    if encoder.exists():
        state, meta = load_weights(encoder)
        model = ResNet15.from_config(meta["model"])
        model.load_state_dict(state, strict=False)
        norm = Normaliser.from_dict(meta["normaliser"])
        arrays["pretrained"] = predict_logits(model.to(device), subset, norm, 256, device, features=True).numpy()
    scratch = [m for m in models if m[0] == "scratch"]
    if scratch:
        _, fraction, seed, weights = max(scratch, key=lambda m: (m[1], -m[2]))
        model, norm, _ = load_classifier(weights, device)
        arrays["scratch"] = predict_logits(model, subset, norm, 256, device, features=True).numpy()
        arrays["scratch_label"] = np.array(f"scratch, label fraction {fraction:g}, seed {seed}")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
