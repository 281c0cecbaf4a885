"""Jets held sparsely in memory, and batches of them.

Detector images are mostly zeros (a simulated jet has about 400 non-zero pixels out of 46,875), so
a set of jets is kept as one flat list of non-zero pixels in CSR form: ``values`` and ``pixel``
(the flat index ``c * H * W + h * W + w``) for all jets back to back, and ``offsets`` saying where
each jet starts. That is 20-100x smaller than dense float32 (the real 139k-jet file fits in a few
GB), gathering a batch is a handful of vectorised index operations, and augmentations draw random
numbers only for the non-zero pixels. A batch becomes a dense (B, C, H, W) tensor at the last
moment, on the device that trains.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from e2essl.data.files import JetFile


@dataclass(frozen=True)
class PixelTables:
    """Where each flat pixel index ``c * H * W + h * W + w`` lies, looked up instead of computed:
    one gather from a small table costs less than the integer divisions it replaces."""

    channel: torch.Tensor  # (C*H*W,) int64: c
    row: torch.Tensor  # (C*H*W,) int64: h
    col: torch.Tensor  # (C*H*W,) int64: w
    channels_last: torch.Tensor  # (C*H*W,) int64: h * W * C + w * C + c, the index in (H, W, C) order


@functools.lru_cache(maxsize=16)
def pixel_tables(image_shape: tuple[int, int, int], device: torch.device) -> PixelTables:
    """The :class:`PixelTables` of one image shape on one device (built once, then cached)."""
    c, h, w = image_shape
    flat = torch.arange(c * h * w, device=device)
    channel, rest = flat // (h * w), flat % (h * w)
    return PixelTables(channel, rest // w, rest % w, rest * c + channel)


class DenseBuffer:
    """Memory that densified batches are written into, reused from one step to the next.

    A fresh (B, C, H, W) float32 batch is 12-24 MB; on a CPU every new allocation of that size is
    handed out by the kernel page by page, and those page faults cost more (about 10 ms for 24 MB)
    than the rest of the data path. A training loop keeps one buffer per live input (one for a
    classifier step, two for the two views of a joint-embedding step): a batch written into it is
    valid until the next batch is written into the same buffer, which is after the step that used
    it has finished its backward pass.
    """

    def __init__(self) -> None:
        self._memory: torch.Tensor | None = None

    def zeros(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A zeroed flat tensor of ``numel`` elements, in the buffer (grown when too small)."""
        mem = self._memory
        if mem is None or mem.numel() < numel or mem.dtype != dtype or mem.device != device:
            mem = self._memory = torch.empty(numel, dtype=dtype, device=device)
        return mem[:numel].zero_()


@dataclass
class SparseBatch:
    """Non-zero pixels of B jets: ``jet`` (0..B-1) and flat ``pixel`` index per value."""

    values: torch.Tensor  # (nnz,) float32, raw GeV
    pixel: torch.Tensor  # (nnz,) int64, c * H * W + h * W + w
    jet: torch.Tensor  # (nnz,) int64, position in the batch
    size: int  # B
    image_shape: tuple[int, int, int]  # (C, H, W)

    def dense(self, channels_last: bool = False, out: DenseBuffer | None = None) -> torch.Tensor:
        """The (B, C, H, W) float32 images; duplicate pixels (from augmentations) are summed.

        ``channels_last`` fills them in channels-last memory order directly (what the convolutions
        run fastest on), which saves a full copy of the batch afterwards. With ``out`` the images
        are written into that reused buffer instead of fresh memory (see :class:`DenseBuffer`).
        """
        c, h, w = self.image_shape
        numel = self.size * c * h * w
        if out is None:
            flat_out = torch.zeros(numel, dtype=self.values.dtype, device=self.values.device)
        else:
            flat_out = out.zeros(numel, self.values.dtype, self.values.device)
        if channels_last:
            to_cl = pixel_tables(self.image_shape, self.pixel.device).channels_last
            flat = self.jet * (c * h * w) + to_cl.index_select(0, self.pixel)  # (b, h, w, c) order
            flat_out.index_add_(0, flat, self.values)
            return flat_out.view(self.size, h, w, c).permute(0, 3, 1, 2)
        flat_out.index_add_(0, self.jet * (c * h * w) + self.pixel, self.values)
        return flat_out.view(self.size, c, h, w)

    def replace(
        self, values: torch.Tensor | None = None, pixel: torch.Tensor | None = None, jet: torch.Tensor | None = None
    ) -> SparseBatch:
        """A batch with some fields swapped (keeps the others)."""
        return SparseBatch(
            self.values if values is None else values,
            self.pixel if pixel is None else pixel,
            self.jet if jet is None else jet,
            self.size,
            self.image_shape,
        )

    def take_jets(self, positions: torch.Tensor) -> SparseBatch:
        """The jets at ``positions`` (increasing) of this batch, renumbered 0..len-1."""
        if len(positions) == self.size:  # increasing and all of them: the batch itself
            return self
        positions = positions.to(self.jet.device)
        new_index = torch.full((self.size,), -1, dtype=torch.long, device=self.jet.device)
        new_index[positions] = torch.arange(len(positions), device=self.jet.device)
        mapped = new_index[self.jet]
        keep = mapped >= 0
        return SparseBatch(self.values[keep], self.pixel[keep], mapped[keep], len(positions), self.image_shape)

    def keep(self, mask: torch.Tensor) -> SparseBatch:
        """Only the entries where ``mask`` is true."""
        return SparseBatch(self.values[mask], self.pixel[mask], self.jet[mask], self.size, self.image_shape)

    @classmethod
    def from_dense(cls, images: torch.Tensor) -> SparseBatch:
        """From (B, C, H, W) images."""
        b = images.shape[0]
        flat = images.reshape(b, -1)
        jet, pixel = torch.nonzero(flat, as_tuple=True)
        return cls(flat[jet, pixel].float(), pixel, jet, b, tuple(images.shape[1:]))


@dataclass
class SparseJets:
    """A set of jets in CSR form, with optional labels; see the module docstring."""

    values: torch.Tensor  # (nnz,) float32
    pixel: torch.Tensor  # (nnz,) int32
    offsets: torch.Tensor  # (N + 1,) int64
    image_shape: tuple[int, int, int]
    labels: torch.Tensor | None = None  # (N,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        """Memory held, in bytes."""
        extra = 0 if self.labels is None else self.labels.numel() * 8
        return self.values.numel() * 4 + self.pixel.numel() * 4 + self.offsets.numel() * 8 + extra

    def to(self, device: torch.device | str) -> SparseJets:
        """The same jets on another device."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return SparseJets(move(self.values), move(self.pixel), move(self.offsets), self.image_shape, move(self.labels))

    def gather(self, idx: torch.Tensor) -> SparseBatch:
        """The jets at positions ``idx`` (B,) as one batch, in that order."""
        idx = idx.to(self.offsets.device)
        starts = self.offsets.index_select(0, idx)
        lengths = self.offsets.index_select(0, idx + 1) - starts
        jet = torch.repeat_interleave(lengths)  # (nnz,) position in the batch: 0, 0, ..., 1, 1, ...
        first_out = torch.cumsum(lengths, 0) - lengths  # where each jet's pixels start in the batch
        source = torch.arange(len(jet), device=idx.device) + (starts - first_out).index_select(0, jet)
        return SparseBatch(self.values.index_select(0, source), self.pixel.index_select(0, source).long(), jet, len(idx), self.image_shape)

    def subset(self, idx: np.ndarray | torch.Tensor) -> SparseJets:
        """A new set holding only the jets at ``idx``, in that order."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        batch = self.gather(idx)
        counts = torch.bincount(batch.jet, minlength=len(idx))
        offsets = torch.zeros(len(idx) + 1, dtype=torch.long, device=counts.device)
        offsets[1:] = torch.cumsum(counts, 0)
        labels = None if self.labels is None else self.labels[idx.to(self.labels.device)]
        return SparseJets(batch.values, batch.pixel.int(), offsets, self.image_shape, labels)

    def dense(self, idx: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
        """Dense (B, C, H, W) images of the jets at ``idx`` (all when None)."""
        idx = torch.arange(len(self)) if idx is None else torch.as_tensor(idx, dtype=torch.long)
        return self.gather(idx).dense()

    @classmethod
    def from_dense(cls, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor | None = None) -> SparseJets:
        """From (N, C, H, W) images."""
        images = torch.as_tensor(images)
        batch = SparseBatch.from_dense(images)
        counts = torch.bincount(batch.jet, minlength=images.shape[0])
        offsets = torch.zeros(images.shape[0] + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(counts, 0)
        lab = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        return cls(batch.values, batch.pixel.int(), offsets, tuple(images.shape[1:]), lab)

    @classmethod
    def from_parts(
        cls, values: list[np.ndarray], pixels: list[np.ndarray], counts: list[np.ndarray], image_shape: tuple[int, int, int]
    ) -> SparseJets:
        """Concatenate chunks of (values, pixel, per-jet counts)."""
        cat = lambda parts, dtype: np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)  # noqa: E731
        offsets = np.zeros(sum(len(c) for c in counts) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(cat(counts, np.int64))
        return cls(
            torch.from_numpy(cat(values, np.float32)), torch.from_numpy(cat(pixels, np.int32)), torch.from_numpy(offsets), image_shape
        )

    @classmethod
    def from_file(
        cls,
        jets: JetFile,
        indices: np.ndarray | None = None,
        chunk: int = 512,
        progress: bool = False,
    ) -> SparseJets:
        """Read the jets at ``indices`` (all when None) in one pass of ``chunk``-jet reads, keeping only
        non-zero pixels. Peak memory is one dense chunk plus the sparse result. Jets keep the order of
        ``indices``; labels are attached when the file has them."""
        from tqdm.auto import tqdm

        wanted = None
        if indices is not None:
            indices = np.asarray(indices, dtype=np.int64)
            wanted = np.zeros(jets.n_jets, dtype=bool)
            wanted[indices] = True
        values, pixels, counts = [], [], []
        with tqdm(total=jets.n_jets, unit="jet", desc=f"load {jets.path.name}", disable=not progress, leave=False) as bar:
            for lo in range(0, jets.n_jets, chunk):
                hi = min(lo + chunk, jets.n_jets)
                if wanted is not None and not wanted[lo:hi].any():
                    bar.update(hi - lo)
                    continue
                v, p, c = jets.read_sparse(lo, hi)
                if wanted is not None:
                    keep_jet = wanted[lo:hi]
                    keep = np.repeat(keep_jet, c)
                    v, p, c = v[keep], p[keep], c[keep_jet]
                values.append(v)
                pixels.append(p)
                counts.append(c)
                bar.update(hi - lo)
        store = cls.from_parts(values, pixels, counts, jets.image_shape)
        if jets.has_labels:
            labels = jets.read_labels()
            store.labels = torch.from_numpy(labels if indices is None else labels[np.sort(indices)])
        if indices is not None:
            # Jets were read in file order; put them in the order asked for.
            store = store.subset(np.searchsorted(np.sort(indices), indices))
        return store


def estimate_sparse_bytes(jets: JetFile, n_jets: int, sample: int = 256) -> int:
    """Bytes a :class:`SparseJets` of ``n_jets`` of this file would take, from its first jets."""
    values, _, counts = jets.read_sparse(0, min(sample, jets.n_jets))
    nnz_per_jet = len(values) / len(counts)
    return int(n_jets * (nnz_per_jet * 8 + 16))


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The visiting order of ``n`` jets in ``epoch``: a pure function of (seed, epoch), so a resumed
    run sees exactly the batches an uninterrupted one would."""
    if not shuffle:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(hash_seed(seed, epoch, 0x5EED))
    return torch.randperm(n, generator=gen)


def hash_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def global_batches(order: torch.Tensor, batch_size: int, drop_last: bool) -> Iterator[torch.Tensor]:
    """An epoch's order cut into global batches (the last one shorter unless ``drop_last``)."""
    n = len(order)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for lo in range(0, stop, batch_size):
        yield order[lo : min(lo + batch_size, stop)]


def rank_positions(batch_len: int, rank: int, world: int) -> torch.Tensor:
    """Positions in a global batch that rank ``rank`` of ``world`` trains on: rank, rank + world, ..."""
    return torch.arange(rank, batch_len, world)


def shard(order: torch.Tensor, batch_size: int, rank: int, world: int, drop_last: bool) -> Iterator[torch.Tensor]:
    """This rank's jets of every global batch (see :func:`rank_positions`).

    Over an epoch the ranks together visit every jet exactly once (``drop_last=False``), and a
    global batch holds the same jets whatever ``world`` is.
    """
    for batch in global_batches(order, batch_size, drop_last):
        yield batch[rank_positions(len(batch), rank, world)]
