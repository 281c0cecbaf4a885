"""Deterministic, stratified train / validation / test splits with nested label fractions.

* test: ``test_fraction`` of each class; never read before the evaluate stage.
* validation: ``val_fraction`` of each class's remaining jets; the only data used for model selection.
* train: the rest, in an order such that every prefix is (close to) stratified, so the subset for
  label fraction ``f`` is simply the first ``ceil(f * n_train)`` jets: the 1 % subset lies inside
  the 10 % subset, which lies inside 100 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from e2essl.errors import DataError


@dataclass(frozen=True)
class Splits:
    """Jet indices into the labelled file."""

    train_order: np.ndarray  # (n_train,) int64; prefixes are the label-fraction subsets
    val: np.ndarray  # (n_val,) int64, sorted
    test: np.ndarray  # (n_test,) int64, sorted

    def train(self, fraction: float = 1.0) -> np.ndarray:
        """Indices of the training subset for a label fraction, in a fixed order."""
        return self.train_order[: fraction_size(len(self.train_order), fraction)]

    def save(self, path) -> None:
        """Write as .npz (atomically)."""
        from e2essl.data.writers import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, train_order=self.train_order, val=self.val, test=self.test)

    @classmethod
    def load(cls, path) -> Splits:
        """Read a file written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["train_order"], z["val"], z["test"])
        except FileNotFoundError:
            raise DataError(path, "splits file not found; run the prepare stage first (dvc repro prepare)") from None
        except Exception as err:
            raise DataError(path, f"not a readable splits file ({err})") from None


def fraction_size(n_train: int, fraction: float) -> int:
    """Number of training jets for a label fraction: ceil, at least 1, at most n_train."""
    return max(1, min(n_train, math.ceil(fraction * n_train - 1e-9)))


def stratified_splits(labels: np.ndarray, test_fraction: float, val_fraction: float, seed: int) -> Splits:
    """Split jets by class with a seeded permutation per class; see the module docstring."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A1175]))
    test, val, train, keys = [], [], [], []
    for cls in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(test_fraction * len(members))
        n_val = round(val_fraction * (len(members) - n_test))
        test.append(members[:n_test])
        val.append(members[n_test : n_test + n_val])
        rest = members[n_test + n_val :]
        train.append(rest)
        # Interleave the classes: jet i of a class of size m sits at (i + u) / m with u ~ U(0, 1).
        keys.append((np.arange(len(rest)) + rng.random(len(rest))) / max(len(rest), 1))
    train_all, key_all = np.concatenate(train), np.concatenate(keys)
    return Splits(
        train_order=train_all[np.argsort(key_all, kind="stable")].astype(np.int64),
        val=np.sort(np.concatenate(val)).astype(np.int64),
        test=np.sort(np.concatenate(test)).astype(np.int64),
    )


def check_splits(path, labels: np.ndarray, splits: Splits, fractions: list[float]) -> None:
    """Every split, and every label-fraction subset, must hold both classes."""
    named = {"test": splits.test, "validation": splits.val}
    named |= {f"train subset for label fraction {f:g}": splits.train(f) for f in fractions}
    for name, idx in named.items():
        counts = np.bincount(labels[idx], minlength=2)
        if counts.min() == 0:
            raise DataError(
                path,
                f"the {name} has {counts[1]} quark and {counts[0]} gluon jets: too few labelled jets "
                f"({len(labels)}) for the splits and label fractions in params.yaml",
            )
