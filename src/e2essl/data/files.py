"""Reading the jet-image files users already have, with checks that fail in one clear line.

Supported layouts (REFERENCE.md):

==========================  =====================================  =========================================
layout                      keys                                   image array
==========================  =====================================  =========================================
ML4SCI quark/gluon HDF5     ``X_jets``, ``y``, ``pt``, ``m0``      (N, 125, 125, 3) float32, channels-last
8-channel HDF5              ``jet`` (+ a label key when labelled)  (N, 125, 125, 8), channels-last
CMS Open Data Parquet       columns ``X_jets``, ``y``, ``pt``,     nested lists 3 x 125 x 125 per row,
                            ``m0``                                 channels-first
==========================  =====================================  =========================================

Key names and the channel count come from :class:`Layout` (params.yaml ``data``). Every reader
returns images channels-first, (B, C, H, W) float32, and reads in chunks: never one jet at a time.
Opening a file checks what is cheap (format, keys, shapes, dtypes, lengths, labels); pixel values
(finite, non-negative) are checked on every chunk as it is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from e2essl.errors import DataError

log = logging.getLogger(__name__)

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
PARQUET_MAGIC = b"PAR1"
EXTRA_COLUMNS = ("pt", "m0")


@dataclass(frozen=True)
class Layout:
    """How a file's arrays are named and shaped; defaults follow the ML4SCI quark/gluon file."""

    image_key: str = "X_jets"
    label_key: str | None = "y"
    channels: int = 3
    image_size: int = 125
    # "error": NaN/inf or negative pixels stop the run; "zero": they are set to 0 (counted in the log).
    bad_pixels: str = "error"


def sniff_format(path: Path) -> str:
    """'hdf5' or 'parquet' from the file's first bytes; a one-line :class:`DataError` otherwise."""
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a directory, expected an HDF5 or Parquet file")
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as err:
        raise DataError(path, f"cannot read ({err.strerror})") from None
    if not head:
        raise DataError(path, "file is empty")
    if head == HDF5_MAGIC:
        return "hdf5"
    if head[:4] == PARQUET_MAGIC:
        return "parquet"
    raise DataError(path, "not an HDF5 or Parquet file (unrecognised content)")


def check_labels(path: Path, labels: np.ndarray, key: str) -> np.ndarray:
    """Labels as int64 (N,), all in {0, 1}; anything else is a :class:`DataError`."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(path, f"labels '{key}' have shape {labels.shape}, expected (N,)")
    if labels.dtype.kind not in "biuf":
        raise DataError(path, f"labels '{key}' have dtype {labels.dtype}, expected numbers 0 or 1")
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(path, f"labels '{key}' must be 0 (gluon) or 1 (quark): found {labels[first].item()!r} at jet {first}")
    return labels.astype(np.int64)


class JetFile:
    """A validated, open jet file. Use :func:`open_jet_file`; close with :meth:`close` or ``with``."""

    path: Path
    layout: Layout
    n_jets: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    has_labels: bool

    def __enter__(self) -> JetFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the file handle."""

    # -- subclasses implement these three --------------------------------------------------
    def _read_raw(self, start: int, stop: int) -> tuple[np.ndarray, bool]:
        """Images of jets [start, stop) as stored, and whether that is channels-last."""
        raise NotImplementedError

    def read_labels(self) -> np.ndarray:
        """All labels, (N,) int64 in {0, 1}."""
        raise NotImplementedError

    def read_column(self, key: str) -> np.ndarray | None:
        """A per-jet column such as ``pt`` or ``m0`` as float32 (N,), or None if the file has none."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------
    def _read_checked(self, start: int, stop: int) -> tuple[np.ndarray, bool]:
        start, stop = max(0, start), min(stop, self.n_jets)
        try:
            images, channels_last = self._read_raw(start, stop)
        except DataError:
            raise
        except Exception as err:  # h5py/pyarrow raise many types on damaged files
            raise DataError(self.path, f"cannot read jets {start}-{stop} (truncated or corrupt file: {err})") from None
        images = np.ascontiguousarray(images, dtype=np.float32)
        return self._check_pixels(images, start), channels_last

    def read_images(self, start: int, stop: int) -> np.ndarray:
        """Jets [start, stop) as validated (B, C, H, W) float32 raw energies in GeV."""
        images, channels_last = self._read_checked(start, stop)
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2)) if channels_last else images

    def read_sparse(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Non-zero pixels of jets [start, stop): ``values`` (nnz,) float32, channels-first flat
        ``pixel`` index (nnz,) int32 and per-jet ``counts`` (B,), without a dense transpose."""
        import torch

        images, channels_last = self._read_checked(start, stop)
        per_jet = images[0].size
        flat = torch.from_numpy(images).view(-1)
        where = torch.nonzero(flat).view(-1)  # torch's nonzero is about 3x faster than numpy's here
        values = flat[where].numpy()
        jet, pixel = np.divmod(where.numpy(), per_jet)
        if channels_last:
            c = self.image_shape[0]
            hw, ch = np.divmod(pixel, c)
            pixel = ch * (per_jet // c) + hw
        return values, pixel.astype(np.int32), np.bincount(jet, minlength=images.shape[0])

    def iter_images(self, chunk: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first jet index, images)`` over [start, stop) in chunks of ``chunk`` jets."""
        stop = self.n_jets if stop is None else min(stop, self.n_jets)
        for lo in range(start, stop, chunk):
            yield lo, self.read_images(lo, min(lo + chunk, stop))

    def read_indices(self, indices: np.ndarray, chunk: int = 512) -> np.ndarray:
        """Images of arbitrary jets, in the order given, read as sorted contiguous runs."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.image_shape), dtype=np.float32)
        order = np.argsort(indices, kind="stable")
        sorted_idx = indices[order]
        pos = 0
        while pos < len(sorted_idx):
            lo = int(sorted_idx[pos])
            # Take every requested jet inside one window of at most `chunk` jets.
            end = int(np.searchsorted(sorted_idx, lo + chunk, side="left"))
            block = self.read_images(lo, int(sorted_idx[end - 1]) + 1)
            out[order[pos:end]] = block[sorted_idx[pos:end] - lo]
            pos = end
        return out

    def _check_pixels(self, images: np.ndarray, start: int) -> np.ndarray:
        # min() is NaN when any value is NaN, so one pass of min and max covers the good case.
        if images.size == 0 or (images.min() >= 0 and images.max() < np.inf):
            return images
        finite = np.isfinite(images)
        with np.errstate(invalid="ignore"):
            bad = ~finite | (images < 0)
        first_local = int(np.argmax(bad.reshape(len(images), -1).any(axis=1)))
        problem = "negative" if finite[first_local].all() else "NaN or inf"
        first = start + first_local
        if self.layout.bad_pixels != "zero":
            raise DataError(
                self.path,
                f"{problem} pixel values in jet {first} (set data.bad_pixels: zero to replace them with 0)",
            )
        count = int(bad.sum())
        log.warning("%s: set %d NaN/inf/negative pixel values to 0 in jets %d-%d", self.path, count, start, start + len(images))
        return np.where(bad, 0.0, images).astype(np.float32)


class H5JetFile(JetFile):
    """The ML4SCI and 8-channel HDF5 layouts (images channels-last; channels-first is accepted too)."""

    def __init__(self, path: Path, layout: Layout, require_labels: bool) -> None:
        import h5py

        self.path, self.layout = path, layout
        try:
            self._file = h5py.File(path, "r")
        except OSError as err:
            raise DataError(path, f"not a readable HDF5 file (truncated or corrupt: {err})") from None
        try:
            self._open(require_labels)
        except Exception:
            self._file.close()
            raise

    def _dataset(self, key: str):
        import h5py

        obj = self._file.get(key)
        if obj is None:
            return None
        if not isinstance(obj, h5py.Dataset):
            raise DataError(self.path, f"'{key}' is a group, expected a dataset")
        return obj

    def _open(self, require_labels: bool) -> None:
        key, layout = self.layout.image_key, self.layout
        images = self._dataset(key)
        if images is None:
            found = ", ".join(sorted(self._file.keys())) or "nothing"
            raise DataError(self.path, f"no dataset '{key}' (found: {found}); set data.image_key")
        shape = images.shape
        if images.dtype.kind not in "fiu":
            raise DataError(self.path, f"'{key}' has dtype {images.dtype}, expected floating-point pixel energies")
        if len(shape) != 4:
            raise DataError(self.path, f"'{key}' has shape {shape}, expected (N, H, W, C) with C = {layout.channels}")
        if shape[-1] == layout.channels:
            self._channels_last = True
            c, h, w = shape[3], shape[1], shape[2]
        elif shape[1] == layout.channels:
            self._channels_last = False
            c, h, w = shape[1], shape[2], shape[3]
        else:
            raise DataError(
                self.path, f"'{key}' has shape {shape}: no axis of {layout.channels} channels (data.channels is {layout.channels})"
            )
        if (h, w) != (layout.image_size, layout.image_size):
            raise DataError(self.path, f"'{key}' images are {h} x {w} pixels, expected {layout.image_size} x {layout.image_size}")
        if shape[0] == 0:
            raise DataError(self.path, f"'{key}' holds no jets")
        self.n_jets, self.image_shape, self._images = shape[0], (c, h, w), images
        labels = self._dataset(layout.label_key) if layout.label_key else None
        self.has_labels = labels is not None
        if require_labels and not self.has_labels:
            found = ", ".join(sorted(self._file.keys()))
            raise DataError(self.path, f"no labels '{layout.label_key}' (found: {found}); set data.label_key")
        for name, ds in [(layout.label_key, labels)] + [(k, self._dataset(k)) for k in EXTRA_COLUMNS]:
            if ds is not None and ds.shape[:1] != (self.n_jets,):
                raise DataError(self.path, f"'{name}' has {ds.shape[0] if ds.shape else 0} entries but '{key}' has {self.n_jets} jets")

    def _read_raw(self, start: int, stop: int) -> tuple[np.ndarray, bool]:
        return self._images[start:stop], self._channels_last

    def read_labels(self) -> np.ndarray:
        if not self.has_labels:
            raise DataError(self.path, f"no labels '{self.layout.label_key}'")
        try:
            raw = self._file[self.layout.label_key][()]
        except Exception as err:
            raise DataError(self.path, f"cannot read labels (truncated or corrupt file: {err})") from None
        return check_labels(self.path, raw, self.layout.label_key)

    def read_column(self, key: str) -> np.ndarray | None:
        ds = self._dataset(key)
        if ds is None:
            return None
        values = np.asarray(ds[()], dtype=np.float32).reshape(-1)
        if not np.isfinite(values).all():
            raise DataError(self.path, f"'{key}' has NaN or inf values")
        return values

    def close(self) -> None:
        self._file.close()


class ParquetJetFile(JetFile):
    """The CMS Open Data conversion: ``X_jets`` as nested lists (C, H, W) per row."""

    def __init__(self, path: Path, layout: Layout, require_labels: bool) -> None:
        import pyarrow.parquet as pq

        self.path, self.layout = path, layout
        try:
            self._pf = pq.ParquetFile(path)
        except Exception as err:
            raise DataError(path, f"not a readable Parquet file (truncated or corrupt: {err})") from None
        names = self._pf.schema_arrow.names
        if layout.image_key not in names:
            raise DataError(path, f"no column '{layout.image_key}' (found: {', '.join(names)}); set data.image_key")
        meta = self._pf.metadata
        self.n_jets = meta.num_rows
        if self.n_jets == 0:
            raise DataError(path, f"'{layout.image_key}' holds no jets")
        self._group_starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        self.has_labels = bool(layout.label_key) and layout.label_key in names
        if require_labels and not self.has_labels:
            raise DataError(path, f"no labels column '{layout.label_key}' (found: {', '.join(names)}); set data.label_key")
        self._names = names
        self.image_shape = (layout.channels, layout.image_size, layout.image_size)
        self.read_images(0, 1)  # checks nesting, shape and values of the first jet now

    def _read_raw(self, start: int, stop: int) -> tuple[np.ndarray, bool]:
        import pyarrow as pa

        first = int(np.searchsorted(self._group_starts, start, side="right") - 1)
        last = int(np.searchsorted(self._group_starts, stop, side="left"))
        table = self._pf.read_row_groups(list(range(first, last)), columns=[self.layout.image_key])
        offset = start - int(self._group_starts[first])
        column = table.column(0).slice(offset, stop - start).combine_chunks()
        values = column
        for depth, expected in enumerate(self.image_shape):
            if not pa.types.is_list(values.type) and not pa.types.is_large_list(values.type):
                raise DataError(self.path, f"'{self.layout.image_key}' is not nested 3 deep (C x H x W lists); found {column.type}")
            lengths = np.asarray(values.value_lengths())
            if not (lengths == expected).all():
                bad = int(lengths[lengths != expected][0])
                name = ("channels", "rows", "columns")[depth]
                raise DataError(self.path, f"'{self.layout.image_key}' has {bad} {name} per jet, expected {expected}")
            values = values.flatten()
        return np.asarray(values, dtype=np.float32).reshape(stop - start, *self.image_shape), False

    def _column(self, key: str) -> np.ndarray:
        return self._pf.read(columns=[key]).column(0).to_numpy()

    def read_labels(self) -> np.ndarray:
        if not self.has_labels:
            raise DataError(self.path, f"no labels column '{self.layout.label_key}'")
        return check_labels(self.path, self._column(self.layout.label_key), self.layout.label_key)

    def read_column(self, key: str) -> np.ndarray | None:
        if key not in self._names:
            return None
        values = np.asarray(self._column(key), dtype=np.float32).reshape(-1)
        if not np.isfinite(values).all():
            raise DataError(self.path, f"'{key}' has NaN or inf values")
        return values


def open_jet_file(path: str | Path, layout: Layout, require_labels: bool = False) -> JetFile:
    """Open and check a jet file of any supported layout; every problem is one :class:`DataError` line."""
    path = Path(path)
    fmt = sniff_format(path)
    cls = H5JetFile if fmt == "hdf5" else ParquetJetFile
    jets = cls(path, layout, require_labels)
    if jets.has_labels and require_labels:
        labels = jets.read_labels()
        if len(labels) != jets.n_jets:
            jets.close()
            raise DataError(path, f"'{layout.label_key}' has {len(labels)} entries but there are {jets.n_jets} jets")
    return jets
