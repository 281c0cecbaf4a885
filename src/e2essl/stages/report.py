"""Stage ``report``: the comparison users come for, as Markdown with PNG figures in ``reports/``.

* a results table: mean and standard deviation over seeds of test ROC AUC, accuracy, loss and gluon
  rejection at 50 % quark efficiency, per arm and label fraction, with the finetuned and linear
  probe arms' AUC gain over scratch and whether it exceeds the seed-to-seed spread;
* ROC curves, AUC against label fraction with error bars, per-epoch validation curves, a 2-D
  projection of test-set embeddings (pretrained encoder against a scratch model), the pretraining
  curves, and the GAN's quality numbers;
* the same figures and ``report.md`` are logged to MLflow in a ``report`` run (the comparison run).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from e2essl import plots
from e2essl.config import Params
from e2essl.data.writers import write_json, write_text
from e2essl.stages.common import StageEnv, require_single_process
from e2essl.stages.evaluate import ARMS, fraction_label

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--evaluate", default="outputs/evaluate", help="evaluate stage output (default: %(default)s)")
    parser.add_argument("--models", default="outputs", help="folder with <arm>/*/history.json (default: %(default)s)")
    parser.add_argument("--pretrain", default="outputs/pretrain/history.json", help="pretraining history (default: %(default)s)")
    parser.add_argument("--quality", default="outputs/generate/quality.json", help="GAN quality metrics (default: %(default)s)")
    parser.add_argument("--out", default="reports", help="output folder (default: %(default)s)")


def gains(summary: dict, fractions: list[float]) -> dict:
    """AUC gain of each pretrained arm over scratch per fraction, with the combined seed spread."""
    out: dict = {}
    for arm in ("finetune", "linear_probe"):
        for f in fractions:
            label = fraction_label(f)
            a, s = summary.get(arm, {}).get(label), summary.get("scratch", {}).get(label)
            if a is None or s is None:
                continue
            gain = a["roc_auc_mean"] - s["roc_auc_mean"]
            spread = float(np.hypot(a["roc_auc_std"], s["roc_auc_std"]))
            out.setdefault(arm, {})[label] = {
                "auc_gain": gain,
                "seed_spread": spread,
                "significant": bool(abs(gain) > spread and min(a["n_seeds"], s["n_seeds"]) > 1),
            }
    return out


def results_table(summary: dict, gain: dict, fractions: list[float], sizes: dict[str, int]) -> str:
    rows = [
        "| arm | label fraction | train jets | test ROC AUC | accuracy | BCE loss | gluon rejection @ 50% q "
        "| AUC gain vs scratch | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in fractions:
        label = fraction_label(f)
        for arm in ARMS:
            s = summary.get(arm, {}).get(label)
            if s is None:
                continue
            g = gain.get(arm, {}).get(label)
            g_text = "-" if g is None else f"{g['auc_gain']:+.4f} (spread {g['seed_spread']:.4f})" + (" *" if g["significant"] else "")
            name = plots.ARM_STYLE[arm]["label"]
            rows.append(
                f"| {name} | {100 * f:g}% | {sizes.get(label, '?')} | {s['roc_auc_mean']:.4f} ± {s['roc_auc_std']:.4f} "
                f"| {s['accuracy_mean']:.4f} ± {s['accuracy_std']:.4f} | {s['loss_mean']:.4f} ± {s['loss_std']:.4f} "
                f"| {s['rejection_at_50_mean']:.2f} ± {s['rejection_at_50_std']:.2f} | {g_text} | {s['n_seeds']} |"
            )
    return "\n".join(rows)


def plot_roc(evaluate_dir: Path, fractions: list[float], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.2 * len(fractions), 3.9), squeeze=False)
    for ax, f in zip(axes[0], fractions, strict=True):
        for arm in ARMS:
            csv = evaluate_dir / "roc" / f"{arm}_{fraction_label(f)}.csv"
            if csv.exists():
                q, g = np.loadtxt(csv, delimiter=",", skiprows=1, unpack=True)
                ok = g > 0
                ax.plot(q[ok], 1 / g[ok], color=plots.ARM_STYLE[arm]["color"], label=plots.ARM_STYLE[arm]["label"])
        ax.set_yscale("log")
        ax.set_xlabel("quark efficiency")
        ax.set_ylabel("gluon rejection (1 / gluon efficiency)")
        ax.set_title(f"{100 * f:g}% of the labels (mean over seeds)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return plots.save(fig, path)


def plot_auc_vs_fraction(summary: dict, fractions: list[float], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for i, arm in enumerate(ARMS):
        pts = [(f, summary[arm][fraction_label(f)]) for f in fractions if fraction_label(f) in summary.get(arm, {})]
        if pts:
            x = np.array([p[0] for p in pts]) * (1 + 0.04 * (i - 1))  # a small offset keeps error bars apart
            ax.errorbar(
                x,
                [p[1]["roc_auc_mean"] for p in pts],
                yerr=[p[1]["roc_auc_std"] for p in pts],
                marker="o",
                capsize=4,
                **plots.ARM_STYLE[arm],
            )
    ax.set_xscale("log")
    ax.set_xlabel("label fraction of the training split")
    ax.set_ylabel("test ROC AUC (mean ± std over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return plots.save(fig, path)


def plot_validation_curves(histories: dict, fractions: list[float], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.2 * len(fractions), 3.6), squeeze=False, sharey=True)
    for ax, f in zip(axes[0], fractions, strict=True):
        for arm in ARMS:
            runs = histories.get((arm, f), [])
            if not runs:
                continue
            curves = np.array([[e["val_auc"] for e in h["epochs"]] for h in runs])
            epochs = np.arange(1, curves.shape[1] + 1)
            mean, std = curves.mean(0), curves.std(0)
            ax.plot(epochs, mean, color=plots.ARM_STYLE[arm]["color"], label=plots.ARM_STYLE[arm]["label"])
            ax.fill_between(epochs, mean - std, mean + std, color=plots.ARM_STYLE[arm]["color"], alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_title(f"{100 * f:g}% of the labels")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("validation ROC AUC")
    axes[0, 0].legend(fontsize=8)
    return plots.save(fig, path)


def plot_embeddings(embeddings: Path, method: str, seed: int, path: Path) -> Path | None:
    if not embeddings.exists():
        return None
    data = np.load(embeddings)
    panels = [
        (k, str(data["scratch_label"]) if k == "scratch" else "pretrained encoder (before finetuning)")
        for k in ("pretrained", "scratch")
        if k in data
    ]
    if not panels:
        return None
    labels = data["labels"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        x = data[key]
        x = (x - x.mean(0)) / (x.std(0) + 1e-8)
        if method == "tsne":
            from sklearn.manifold import TSNE

            xy = TSNE(2, random_state=seed, init="pca").fit_transform(x)
        else:
            from sklearn.decomposition import PCA

            xy = PCA(2, random_state=seed).fit_transform(x)
        for cls, name, colour in ((0, "gluon", "#C44E52"), (1, "quark", "#4C72B0")):
            sel = labels == cls
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, alpha=0.5, c=colour, label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(markerscale=3, fontsize=8)
    fig.suptitle(f"test-set features, 2-D {method.upper()}")
    return plots.save(fig, path)


def plot_pretraining(history_path: Path, path: Path) -> Path | None:
    if not history_path.exists():
        return None
    hist = json.loads(history_path.read_text())["epochs"]
    epochs = [h["epoch"] for h in hist]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name in hist[0]["terms"]:
        axes[0].plot(epochs, [h["terms"][name] for h in hist], label=name)
    axes[0].set_yscale("log")
    axes[0].set_title("loss terms")
    axes[0].legend(fontsize=8)
    axes[1].plot(epochs, [h["rank_features"] for h in hist], label="encoder features (of 32)")
    axes[1].plot(epochs, [h["rank_embeddings"] for h in hist], label="projector output")
    axes[1].set_title("effective rank (label-free)")
    axes[1].legend(fontsize=8)
    knn = [(h["epoch"], h["knn_val_auc"]) for h in hist if h["knn_val_auc"] is not None]
    if knn:
        axes[2].plot(*zip(*knn, strict=True), marker="o")
    axes[2].set_title("kNN ROC AUC on the validation split")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return plots.save(fig, path)


def load_histories(models_dir: Path, fractions: list[float], seeds: list[int]) -> dict:
    out: dict = {}
    for arm in ARMS:
        for path in sorted((models_dir / arm).glob("*/history.json")):
            h = json.loads(path.read_text())
            if h["label_fraction"] in fractions and h["seed"] in seeds:
                out.setdefault((arm, h["label_fraction"]), []).append(h)
    return out


def run(args: argparse.Namespace, params: Params) -> None:
    require_single_process("report")
    env = StageEnv.create(params)
    evaluate_dir, out = Path(args.evaluate), Path(args.out)
    fractions = params.study.fractions
    summary = json.loads((evaluate_dir / "summary.json").read_text())
    histories = load_histories(Path(args.models), fractions, params.study.seeds)
    gain = gains(summary, fractions)
    sizes = {fraction_label(f): runs[0]["train_jets"] for (arm, f), runs in histories.items() if arm == "scratch"}
    figures = {
        "ROC curves": plot_roc(evaluate_dir, fractions, out / "roc_curves.png"),
        "AUC against label fraction": plot_auc_vs_fraction(summary, fractions, out / "auc_vs_fraction.png"),
        "Validation AUC per epoch": plot_validation_curves(histories, fractions, out / "validation_curves.png"),
        "Test-set embeddings": plot_embeddings(
            evaluate_dir / "embeddings.npz", params.report.embedding_method, params.base.seed, out / "embeddings.png"
        ),
        "Pretraining": plot_pretraining(Path(args.pretrain), out / "pretraining.png"),
    }
    quality = json.loads(Path(args.quality).read_text()) if Path(args.quality).exists() else None
    lines = [
        "# e2essl report",
        "",
        f"Pretraining: {params.pretrain.method}, {params.pretrain.epochs} epochs; supervised budget: {params.supervised.epochs} epochs, "
        f"batch {params.supervised.batch_size}, {params.supervised.schedule} schedule; seeds {params.study.seeds}. "
        "All numbers are on the untouched test split; mean ± standard deviation over seeds. "
        "`*` marks a gain larger than the seed-to-seed spread (the two arms' standard deviations added in quadrature).",
        "",
        results_table(summary, gain, fractions, sizes),
        "",
    ]
    if quality:
        lines += [
            "## The GAN-generated pretraining set",
            "",
            f"Classifier two-sample test AUC (0.5 = indistinguishable): images {quality['c2st_auc']:.3f}, "
            f"observables {quality['c2st_observables_auc']:.3f}; FPD {quality['fpd']:.4g}; KPD {quality['kpd']:.4g}; "
            f"mean relative 1-D Wasserstein distance {quality['w1_relative_mean']:.3f} (over {quality['n_compared']} jets).",
            "",
        ]
    for title, fig in figures.items():
        if fig is not None:
            lines += [f"## {title}", "", f"![{title}]({fig.name})", ""]
    write_text(out / "report.md", "\n".join(lines))
    write_json(out / "gains.json", gain)
    with env.run("report", ["study", "report"]) as run:
        for arm, by_label in gain.items():
            run.log_metrics({f"auc_gain/{arm}/{label}": g["auc_gain"] for label, g in by_label.items()})
        run.log_artifact(out / "report.md")
        for fig in figures.values():
            if fig is not None:
                run.log_artifact(fig)
    print("\n".join(lines[: 6 + len(fractions) * len(ARMS) + 2]))
    log.info("report written to %s", out / "report.md")
