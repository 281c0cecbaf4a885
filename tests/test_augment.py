"""Augmentations: exact where they should be, random per jet, different between views, shape-keeping."""

from __future__ import annotations

import pytest
import torch

from e2essl.augment import GEOMETRIC, NONE, augment, two_views
from e2essl.config import Augment
from e2essl.data.sparse import SparseBatch

from .conftest import random_images


@pytest.fixture
def batch():
    return SparseBatch.from_dense(torch.from_numpy(random_images(16, size=24, channels_last=False, seed=3)))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def only(**kw) -> Augment:
    """One augmentation switched on."""
    return NONE.model_copy(update=kw)


def test_no_augmentation_is_the_identity(batch):
    assert torch.equal(augment(batch, NONE, gen()).dense(), batch.dense())


def test_symmetries_are_exact_and_conserve_energy_per_channel(batch):
    images = batch.dense()
    out = augment(batch, GEOMETRIC, gen()).dense()
    assert out.shape == images.shape
    torch.testing.assert_close(out.sum(dim=(2, 3)), images.sum(dim=(2, 3)))
    # Every output jet is one of the 8 symmetries of its input, exactly.
    for i in range(len(images)):
        x = images[i]
        candidates = [torch.rot90(t, k, dims=(1, 2)) for t in (x, x.flip(2)) for k in range(4)]
        assert any(torch.equal(out[i], c) for c in candidates)


def test_all_eight_symmetries_occur():
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).view(1, 2, 5, 5) + 1
    batch = SparseBatch.from_dense(x.expand(400, -1, -1, -1).clone())
    out = augment(batch, GEOMETRIC, gen()).dense()
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) == 8


def test_shifts_move_by_whole_pixels_with_zero_fill(batch):
    images = batch.dense()
    out = augment(batch, only(max_shift=2), gen()).dense()
    for i in range(len(images)):
        found = False
        for dr in range(-2, 3):
            for dc in range(-2, 3):
                moved = torch.zeros_like(images[i])
                src = images[i][:, max(0, -dr) : 24 - max(0, dr), max(0, -dc) : 24 - max(0, dc)]
                moved[:, max(0, dr) : max(0, dr) + src.shape[1], max(0, dc) : max(0, dc) + src.shape[2]] = src
                found |= torch.equal(out[i], moved)
        assert found
    assert out.sum() <= images.sum() + 1e-3  # pixels pushed out are lost, nothing wraps around


def test_energy_splitting_conserves_energy_and_adds_neighbours(batch):
    images = batch.dense()
    out = augment(batch, only(split_prob=0.5), gen()).dense()
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)), rtol=1e-5, atol=1e-4)
    assert (out > 0).sum() > (images > 0).sum()


def test_smearing_scale_and_dropout_change_energies_as_asked(batch):
    images = batch.dense()
    smeared = augment(batch, only(smear_stochastic=0.2), gen()).dense()
    assert ((smeared > 0) <= (images > 0)).all()  # only existing pixels change
    rel = (smeared[images > 0] - images[images > 0]) / images[images > 0]
    assert 0.02 < rel.std() < 1.0 and abs(rel.mean()) < 0.1
    scaled = augment(batch, only(scale_jitter=0.05), gen()).dense()
    ratio = scaled.sum(dim=(2, 3)) / images.sum(dim=(2, 3))
    assert 0.005 < ratio.std() < 0.15
    dropped = augment(batch, only(soft_dropout=1.0, soft_threshold=0.5), gen()).dense()
    assert torch.equal(dropped, torch.where(images < 0.5, torch.zeros_like(images), images))
    assert (dropped >= 0).all() and (smeared >= 0).all()


def test_random_per_jet_and_different_between_the_two_views(batch):
    # The same jet repeated: each copy gets its own draw.
    same = SparseBatch.from_dense(batch.dense()[:1].expand(32, -1, -1, -1).clone())
    cfg = Augment()
    a, b = two_views(same, cfg, gen(1))
    dense_a, dense_b = a.dense(), b.dense()
    assert len({tuple(x.flatten()[:400].tolist()) for x in dense_a}) > 20
    assert not torch.equal(dense_a, dense_b)
    assert dense_a.shape == dense_b.shape == (32, 3, 24, 24)
    # Reproducible from the generator's seed.
    again_a, _ = two_views(same, cfg, gen(1))
    assert torch.equal(again_a.dense(), dense_a)


def _shifted(x: torch.Tensor, dr: int, dc: int) -> torch.Tensor:
    """``x`` (C, H, W) moved by (dr, dc) pixels with zero fill."""
    _, h, w = x.shape
    out = torch.zeros_like(x)
    src = x[:, max(0, -dr) : h - max(0, dr), max(0, -dc) : w - max(0, dc)]
    out[:, max(0, dr) : max(0, dr) + src.shape[1], max(0, dc) : max(0, dc) + src.shape[2]] = src
    return out


@pytest.mark.parametrize("size", [(24, 24), (10, 14)])
def test_flips_transpose_and_shift_together_move_each_jet_as_one_symmetry_then_one_shift(size):
    # The three are composed into one map of the grid per jet: each output must still be a shift of
    # one symmetry of its input (on a non-square grid only the flips, no transpose).
    h, w = size
    images = torch.from_numpy(random_images(12, size=max(h, w), channels_last=False, seed=4))[:, :, :h, :w].contiguous()
    out = augment(SparseBatch.from_dense(images), only(flip=True, rotate90=True, max_shift=2), gen(5)).dense()
    assert out.shape == images.shape
    for i in range(len(images)):
        x = images[i]
        if h == w:
            symmetries = [torch.rot90(t, k, dims=(1, 2)) for t in (x, x.flip(2)) for k in range(4)]
        else:
            symmetries = [x, x.flip(1), x.flip(2), x.flip(1).flip(2)]
        moves = [_shifted(s, dr, dc) for s in symmetries for dr in range(-2, 3) for dc in range(-2, 3)]
        assert any(torch.equal(out[i], m) for m in moves), f"jet {i} is not a shifted symmetry of its input"
