"""Commands that are not pipeline stages: ``simulate``, ``inspect``, ``predict``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from e2essl.config import Params
from e2essl.data.files import Layout, open_jet_file
from e2essl.errors import E2EError
from e2essl.stages.common import layout_from, progress_enabled

log = logging.getLogger(__name__)


# -- simulate -------------------------------------------------------------------------------
def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labelled", help="labelled output file (default: data.labelled)")
    parser.add_argument("--unlabelled", help="unlabelled pool output file (default: data.unlabelled)")
    parser.add_argument("--only", choices=["labelled", "unlabelled"], help="write just one of the two files")
    parser.add_argument("--n-labelled", type=int, help="jets in the labelled file (default: simulate.n_labelled)")
    parser.add_argument("--n-unlabelled", type=int, help="jets in the pool (default: simulate.n_unlabelled)")
    parser.add_argument("--force", action="store_true", help="overwrite files that exist (otherwise they are kept)")


def run_simulate(args: argparse.Namespace, params: Params) -> None:
    from e2essl.data.simulate import write_simulated_file

    cfg = params.simulate
    jobs = [
        ("labelled", Path(args.labelled or params.data.labelled), args.n_labelled or cfg.n_labelled, cfg.seed_labelled),
        ("unlabelled", Path(args.unlabelled or params.data.unlabelled), args.n_unlabelled or cfg.n_unlabelled, cfg.seed_unlabelled),
    ]
    for kind, path, n, seed in jobs:
        if args.only and args.only != kind:
            continue
        if n <= 0:
            raise E2EError(f"--n-{kind}: must be positive (got {n})")
        if path.exists() and not args.force:
            log.info("%s exists; keeping it (use --force to overwrite)", path)
            continue
        if params.data.image_size % 5 or params.data.channels != 3:
            raise E2EError(
                "params.yaml: the simulator writes 3-channel images whose size is a multiple of 5 (data.channels, data.image_size)"
            )
        write_simulated_file(
            path, n, seed, cfg, labelled=kind == "labelled", image_size=params.data.image_size, progress=progress_enabled()
        )
        log.info("wrote %d %s jets to %s", n, kind, path)


# -- inspect --------------------------------------------------------------------------------
def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="an HDF5 or Parquet jet file")
    parser.add_argument("--image-key", help="image dataset/column (default: data.image_key)")
    parser.add_argument("--label-key", help="label dataset/column (default: data.label_key); '' for none")
    parser.add_argument("--channels", type=int, help="channel count (default: data.channels)")
    parser.add_argument("--plot", help="write the mean image per class and channel to this PNG")
    parser.add_argument("--max-jets", type=int, default=0, help="summarise only the first N jets (default: all)")


def inspect_file(path: Path, layout: Layout, channel_names: list[str], max_jets: int = 0, chunk: int = 512, progress: bool = False) -> dict:
    """Validate every jet of a file and summarise it (see ``e2essl inspect --help``)."""
    from tqdm.auto import tqdm

    from e2essl.observables import jet_observables

    with open_jet_file(path, layout) as jets:
        n = jets.n_jets if max_jets <= 0 else min(max_jets, jets.n_jets)
        labels = jets.read_labels()[:n] if jets.has_labels else None
        c, h, w = jets.image_shape
        names = channel_names if len(channel_names) == c else [f"ch{i}" for i in range(c)]
        classes = [0, 1] if labels is not None else [None]
        sums = {k: np.zeros((c, h, w)) for k in classes}
        counts = dict.fromkeys(classes, 0)
        per_jet: dict[str, list[np.ndarray]] = {}
        for lo, block in tqdm(jets.iter_images(chunk, 0, n), total=(n + chunk - 1) // chunk, desc="inspect", disable=not progress):
            obs = jet_observables(block)
            for key, value in obs.items():
                if value.ndim == 1:
                    per_jet.setdefault(key, []).append(value)
            for k in classes:
                sel = slice(None) if k is None else labels[lo : lo + len(block)] == k
                sums[k] += block[sel].sum(axis=0)
                counts[k] += len(block[sel])
        obs = {k: np.concatenate(v) for k, v in per_jet.items()}
        summary = {
            "file": str(path),
            "format": type(jets).__name__.removesuffix("JetFile").lower(),
            "jets": n,
            "channels": c,
            "image_size": [h, w],
            "labelled": labels is not None,
            "pt": _stats(jets.read_column("pt")),
            "m0": _stats(jets.read_column("m0")),
        }
    summary["channel_stats"] = {
        name: {
            "mean_energy_per_jet": float(obs[f"energy_ch{i}"].mean()),
            "mean_nonzero_pixels": float(obs[f"pixels_ch{i}"].mean()),
        }
        for i, name in enumerate(names)
    }
    if labels is not None:
        summary["class_counts"] = {"quark (y=1)": int((labels == 1).sum()), "gluon (y=0)": int((labels == 0).sum())}
        summary["per_class"] = {
            cls_name: {
                "mean_nonzero_pixels": float(sum(obs[f"pixels_ch{i}"][labels == k].mean() for i in range(c))),
                "mean_width": float(obs["width"][labels == k].mean()),
                "mean_image_mass": float(obs["mass"][labels == k].mean()),
            }
            for k, cls_name in ((1, "quark (y=1)"), (0, "gluon (y=0)"))
        }
        q, g = summary["per_class"]["quark (y=1)"], summary["per_class"]["gluon (y=0)"]
        summary["label_check"] = (
            "consistent with y = 1 quark: the y = 0 class has more pixels and is wider"
            if g["mean_nonzero_pixels"] > q["mean_nonzero_pixels"] and g["mean_width"] > q["mean_width"]
            else "CHECK THE LABELS: the y = 1 class is not the narrower, lower-multiplicity one expected of quarks"
        )
    summary["_mean_images"] = {k: sums[k] / max(counts[k], 1) for k in classes}
    summary["_channel_names"] = names
    return summary


def _stats(values: np.ndarray | None) -> dict | None:
    if values is None:
        return None
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()), "max": float(values.max())}


def plot_mean_images(summary: dict, path: Path) -> None:
    """Mean image per class (rows) and channel (columns), log colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    from e2essl.data.writers import atomic_path

    means, names = summary["_mean_images"], summary["_channel_names"]
    rows = [(k, {1: "quark (y=1)", 0: "gluon (y=0)", None: "all jets"}[k]) for k in means]
    fig, axes = plt.subplots(len(rows), len(names), figsize=(3.2 * len(names), 3.0 * len(rows)), squeeze=False)
    extent = summary["image_size"][0] * 0.0174 / 2
    for r, (k, label) in enumerate(rows):
        for c, name in enumerate(names):
            img = means[k][c]
            positive = img[img > 0]
            norm = LogNorm(vmin=max(positive.min(), positive.max() * 1e-4), vmax=positive.max()) if positive.size else None
            im = axes[r, c].imshow(
                np.where(img > 0, img, np.nan), norm=norm, cmap="viridis", extent=[-extent, extent, -extent, extent], origin="lower"
            )
            axes[r, c].set_title(f"{label}: {name}", fontsize=9)
            axes[r, c].set_xlabel(r"$\Delta\phi$")
            axes[r, c].set_ylabel(r"$\Delta\eta$")
            fig.colorbar(im, ax=axes[r, c], label="mean GeV / pixel")
    fig.suptitle(Path(summary["file"]).name)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def run_inspect(args: argparse.Namespace, params: Params) -> None:
    import json

    layout = layout_from(params)
    layout = Layout(
        image_key=args.image_key or layout.image_key,
        label_key=(args.label_key or None) if args.label_key is not None else layout.label_key,
        channels=args.channels or layout.channels,
        image_size=layout.image_size,
        bad_pixels=layout.bad_pixels,
    )
    names = params.data.channel_names if layout.channels == params.data.channels else []
    summary = inspect_file(Path(args.file), layout, names, args.max_jets, params.data.read_chunk, progress_enabled())
    if args.plot:
        plot_mean_images(summary, Path(args.plot))
    public = {k: v for k, v in summary.items() if not k.startswith("_")}
    print(json.dumps(public, indent=2))


# -- predict --------------------------------------------------------------------------------
def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="models:/NAME/VERSION, models:/NAME@ALIAS, or a local .safetensors / MLflow model folder"
    )
    parser.add_argument("--input", required=True, help="jet file in any supported layout")
    parser.add_argument("--output", required=True, help="CSV to write: jet index and quark probability")
    parser.add_argument("--batch-size", type=int, default=256)


def run_predict(args: argparse.Namespace, params: Params) -> None:
    from e2essl.data.writers import atomic_path
    from e2essl.serving import load_predictor

    output = Path(args.output)
    if output.exists() and output.resolve() == Path(args.input).resolve():
        raise E2EError(f"{output}: refusing to overwrite the input file")
    predictor = load_predictor(args.model)
    layout = layout_from(params, label_key=False)
    layout = Layout(layout.image_key, None, predictor.channels, predictor.image_size, layout.bad_pixels)
    with open_jet_file(args.input, layout) as jets, atomic_path(output) as tmp, open(tmp, "w") as fh:
        fh.write("jet,quark_probability\n")
        for lo, block in jets.iter_images(args.batch_size):
            probs = predictor.predict_channels_first(block)
            fh.writelines(f"{lo + i},{p:.6f}\n" for i, p in enumerate(probs))
    log.info("wrote %s", output)
