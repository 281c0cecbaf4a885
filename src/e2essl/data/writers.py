"""Writing outputs atomically: a temporary file in the same folder, renamed into place on success.

A killed process leaves at most a ``.tmp-*`` file behind, never a half-written output under the
real name, and an existing file is only replaced once its successor is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


class AtomicFile:
    """A temporary file next to ``path``: :meth:`commit` renames it into place, :meth:`discard` removes it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o666 & ~umask)

    def commit(self) -> None:
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed to ``path``."""
    target = AtomicFile(path)
    try:
        yield target.tmp
        target.commit()
    finally:
        target.discard()


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


class H5JetWriter:
    """Write jets in the ML4SCI HDF5 layout, chunk by chunk, to a temporary file renamed on success.

    Images are stored channels-last, (N, H, W, C) float32, gzip-compressed in chunks of a few jets
    (sparse detector images compress about 90x). Timestamps are off, so the same content gives a
    bit-identical file.
    """

    def __init__(
        self,
        path: str | Path,
        n_jets: int,
        image_shape: tuple[int, int, int],
        image_key: str = "X_jets",
        label_key: str | None = "y",
        columns: tuple[str, ...] = ("pt", "m0"),
        attrs: dict[str, Any] | None = None,
        compression_level: int = 1,
    ) -> None:
        import h5py

        self.path = Path(path)
        self._target = AtomicFile(self.path)
        h, w, c = image_shape
        self.n_jets = n_jets
        self._file = h5py.File(self._target.tmp, "w", libver="earliest", track_order=False)
        chunk_jets = max(1, min(16, n_jets))  # 16 jets: fast gzip level 1, cheap partial reads
        self._images = self._file.create_dataset(
            image_key,
            shape=(n_jets, h, w, c),
            dtype="float32",
            chunks=(chunk_jets, h, w, c),
            compression="gzip",
            compression_opts=compression_level,
            shuffle=False,
            track_times=False,
        )
        self._columns = {}
        names = ([label_key] if label_key else []) + list(columns)
        for name in names:
            dtype = "int64" if name == label_key else "float32"
            self._columns[name] = self._file.create_dataset(name, shape=(n_jets,), dtype=dtype, track_times=False)
        for key, value in (attrs or {}).items():
            self._file.attrs[key] = value
        self._label_key = label_key
        self._written = 0

    def write(self, images_nhwc: np.ndarray, **columns: np.ndarray) -> None:
        """Append a chunk: images (B, H, W, C) plus the same-length per-jet columns."""
        lo, hi = self._written, self._written + len(images_nhwc)
        if hi > self.n_jets:
            raise ValueError(f"writing jets {lo}-{hi} past the declared {self.n_jets}")
        self._images[lo:hi] = images_nhwc
        for name, ds in self._columns.items():
            if name not in columns:
                raise ValueError(f"missing column '{name}'")
            ds[lo:hi] = columns[name]
        self._written = hi

    def __enter__(self) -> H5JetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is None and self._written == self.n_jets:
            self._target.commit()
            return
        self._target.discard()
        if exc_type is None:
            raise ValueError(f"{self.path}: wrote {self._written} of {self.n_jets} jets; nothing was saved")
