"""The prepared splits on disk: sparse jets in an uncompressed HDF5 file, one file per split.

Written by the prepare stage in one streaming pass over the labelled file (bounded memory), read by
the training stages in well under a second. Datasets:

=================  ============  ==========================================================
``values``         (nnz,) f32    non-zero pixel energies (GeV), jet after jet
``pixel``          (nnz,) i32    channels-first flat index ``c * H * W + h * W + w``
``offsets``        (N + 1,) i64  where each jet's pixels start
``labels``         (N,) i64      1 = quark, 0 = gluon
``source_index``   (N,) i64      the jet's index in the labelled file
``rank``           (N,) i64      position in the split's order; the label-fraction subset
                                 ``f`` is the jets with ``rank < ceil(f * N)``
=================  ============  ==========================================================

Jets are stored in file order, so writing never needs random access to the source file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from e2essl.data.sparse import SparseJets
from e2essl.data.splits import fraction_size
from e2essl.data.writers import AtomicFile
from e2essl.errors import DataError

DATASETS = ("values", "pixel", "offsets", "labels", "source_index", "rank")


class SparseStoreWriter:
    """Append jets to a new store; the file appears under its name only when closed cleanly."""

    def __init__(self, path: str | Path, image_shape: tuple[int, int, int], attrs: dict | None = None) -> None:
        import h5py

        self.path = Path(path)
        self._target = AtomicFile(self.path)
        self._file = h5py.File(self._target.tmp, "w", libver="earliest")
        specs = {"values": "float32", "pixel": "int32", "offsets": "int64", "labels": "int64", "source_index": "int64", "rank": "int64"}
        self._ds = {
            name: self._file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(65536,), track_times=False)
            for name, dtype in specs.items()
        }
        self._ds["offsets"].resize((1,))
        self._ds["offsets"][0] = 0
        self._file.attrs["image_shape"] = np.asarray(image_shape, dtype=np.int64)
        for key, value in (attrs or {}).items():
            self._file.attrs[key] = value
        self._nnz = 0

    def _append(self, name: str, data: np.ndarray) -> None:
        ds = self._ds[name]
        n = ds.shape[0]
        ds.resize((n + len(data),))
        ds[n:] = data

    def append(
        self, values: np.ndarray, pixel: np.ndarray, counts: np.ndarray, labels: np.ndarray, source_index: np.ndarray, rank: np.ndarray
    ) -> None:
        """Add jets given as sparse entries with per-jet ``counts``."""
        self._append("values", values)
        self._append("pixel", pixel)
        self._append("offsets", self._nnz + np.cumsum(counts))
        self._nnz += int(np.sum(counts))
        self._append("labels", labels)
        self._append("source_index", source_index)
        self._append("rank", rank)

    def __enter__(self) -> SparseStoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is None:
            self._target.commit()
        else:
            self._target.discard()


class SparseStore:
    """A store written by :class:`SparseStoreWriter`; small index arrays are read at open."""

    def __init__(self, path: str | Path) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(self.path, "prepared split not found; run the prepare stage first (dvc repro prepare)")
        try:
            self._file = h5py.File(self.path, "r")
            missing = [d for d in DATASETS if d not in self._file]
            if missing:
                raise DataError(self.path, f"not a prepared split (missing {', '.join(missing)}); rerun the prepare stage")
            self.image_shape = tuple(int(x) for x in self._file.attrs["image_shape"])
            self.offsets = self._file["offsets"][()]
            self.labels = self._file["labels"][()]
            self.source_index = self._file["source_index"][()]
            self.rank = self._file["rank"][()]
        except DataError:
            raise
        except Exception as err:
            raise DataError(self.path, f"not a readable prepared split ({err}); rerun the prepare stage") from None

    def __len__(self) -> int:
        return len(self.labels)

    def __enter__(self) -> SparseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def subset_mask(self, fraction: float = 1.0) -> np.ndarray:
        """Which stored jets belong to the label-fraction subset."""
        return self.rank < fraction_size(len(self), fraction)

    def nbytes(self, fraction: float = 1.0) -> int:
        """Memory the subset takes as :class:`SparseJets`."""
        mask = self.subset_mask(fraction)
        nnz = int(np.diff(self.offsets)[mask].sum())
        return nnz * 8 + int(mask.sum()) * 24

    def read_block(self, start: int, stop: int, mask: np.ndarray | None = None) -> SparseJets:
        """Stored jets [start, stop) (those where ``mask`` is true, if given), in stored order."""
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        values = self._file["values"][lo:hi]
        pixel = self._file["pixel"][lo:hi]
        counts = np.diff(self.offsets[start : stop + 1])
        labels = self.labels[start:stop]
        if mask is not None:
            keep_jet = mask[start:stop]
            keep = np.repeat(keep_jet, counts)
            values, pixel, counts, labels = values[keep], pixel[keep], counts[keep_jet], labels[keep_jet]
        jets = SparseJets.from_parts([values], [pixel], [counts], self.image_shape)
        jets.labels = torch.from_numpy(labels.astype(np.int64))
        return jets

    def load(self, fraction: float = 1.0) -> SparseJets:
        """The label-fraction subset in memory, ordered by rank (so it is the same whatever the file order)."""
        mask = self.subset_mask(fraction)
        jets = self.read_block(0, len(self), mask)
        return jets.subset(np.argsort(self.rank[mask], kind="stable"))

    def iter_blocks(self, block: int, order: np.ndarray, fraction: float = 1.0) -> Iterator[SparseJets]:
        """Stream the subset block by block, visiting blocks in ``order`` (block indices)."""
        mask = self.subset_mask(fraction)
        for b in order:
            lo, hi = int(b) * block, min((int(b) + 1) * block, len(self))
            if mask[lo:hi].any():
                yield self.read_block(lo, hi, mask)
