"""Stage ``prepare``: check the labelled file, split it, store the splits sparsely, compute statistics.

One streaming pass over the labelled file (bounded memory, every pixel checked):

* stratified train / validation / test splits with nested label fractions (data/splits.py);
* ``train.h5``, ``val.h5``, ``test.h5``: the jets of each split as sparse stores (data/store.py);
  later stages read only the splits they may see, and dvc.yaml lists exactly those as deps, so
  the test split is provably untouched until ``evaluate``;
* ``normalisation.json``: per-channel statistics of the training split only;
* ``split_sizes.json``: jets and class counts per split and label fraction (a DVC metrics file).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from e2essl.config import Params
from e2essl.data.files import open_jet_file
from e2essl.data.preprocess import ChannelStats, Normaliser
from e2essl.data.splits import check_splits, fraction_size, stratified_splits
from e2essl.data.store import SparseStoreWriter
from e2essl.data.writers import write_json
from e2essl.errors import DataError
from e2essl.stages.common import Prepared, layout_from, progress_enabled, require_single_process
from e2essl.tracking import StageRun

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", help="labelled file (default: data.labelled from params.yaml)")
    parser.add_argument("--out", default="outputs/prepare", help="output folder (default: %(default)s)")


def prepare(params: Params, source: Path, out: Path, progress: bool = False) -> dict:
    """Write the prepared splits for ``source`` into ``out``; returns the split-size summary."""
    layout = layout_from(params)
    with open_jet_file(source, layout, require_labels=True) as jets:
        labels = jets.read_labels()
        counts = np.bincount(labels, minlength=2)
        if counts.min() == 0:
            only = "quark (y = 1)" if counts[1] else "gluon (y = 0)"
            raise DataError(source, f"all {len(labels)} jets are {only}: a classifier needs both classes")
        cfg = params.prepare
        splits = stratified_splits(labels, cfg.test_fraction, cfg.val_fraction, params.base.seed)
        check_splits(source, labels, splits, params.study.fractions)
        which = np.full(len(labels), -1)
        rank = np.zeros(len(labels), dtype=np.int64)
        for s, idx in enumerate((splits.train_order, splits.val, splits.test)):
            which[idx] = s
            rank[idx] = np.arange(len(idx))
        c, h, w = jets.image_shape
        stats = ChannelStats(channels=c, pixels_per_channel=h * w)
        attrs = {"source": str(source), "seed": params.base.seed}
        with contextlib.ExitStack() as stack:
            writers = [
                stack.enter_context(SparseStoreWriter(out / f"{name}.h5", jets.image_shape, attrs | {"split": name})) for name in SPLITS
            ]
            bar = stack.enter_context(tqdm(total=jets.n_jets, unit="jet", desc="prepare", disable=not progress))
            chunk = params.data.read_chunk
            for lo in range(0, jets.n_jets, chunk):
                hi = min(lo + chunk, jets.n_jets)
                values, pixel, per_jet = jets.read_sparse(lo, hi)
                jet_ids = np.arange(lo, hi)
                for s, writer in enumerate(writers):
                    keep_jet = which[lo:hi] == s
                    keep = np.repeat(keep_jet, per_jet)
                    writer.append(
                        values[keep], pixel[keep], per_jet[keep_jet], labels[lo:hi][keep_jet], jet_ids[keep_jet], rank[lo:hi][keep_jet]
                    )
                    if s == 0:
                        stats.update(values[keep], pixel[keep], int(keep_jet.sum()))
                bar.update(hi - lo)
    normaliser = Normaliser.from_stats(params.data.preprocess, stats, params.data.channel_names)
    write_json(out / "normalisation.json", normaliser.to_dict())

    def describe(idx: np.ndarray) -> dict:
        q = int(labels[idx].sum())
        return {"jets": len(idx), "quark": q, "gluon": len(idx) - q}

    sizes = {
        "train": describe(splits.train_order),
        "val": describe(splits.val),
        "test": describe(splits.test),
        "fractions": {f"{f:g}": describe(splits.train(f)) for f in params.study.fractions},
    }
    write_json(out / "split_sizes.json", sizes)
    log.info(
        "prepared %s: train %d, val %d, test %d jets; label fractions %s",
        source,
        len(splits.train_order),
        len(splits.val),
        len(splits.test),
        ", ".join(f"{f:g}: {fraction_size(len(splits.train_order), f)}" for f in params.study.fractions),
    )
    return sizes


def run(args: argparse.Namespace, params: Params) -> None:
    require_single_process("prepare")
    source = Path(args.input or params.data.labelled)
    out = Path(args.out)
    dump = params.model_dump(mode="json")
    with StageRun("prepare", {k: dump[k] for k in ("base", "data", "prepare", "study")}, dump, params.tracking.experiment) as run_:
        sizes = prepare(params, source, out, progress_enabled())
        run_.log_metrics({f"{split}_jets": sizes[split]["jets"] for split in SPLITS})
        run_.log_artifact(out / "split_sizes.json")
        run_.log_artifact(Prepared(out).normalisation)
