"""Splits (stratified, disjoint, nested), sparse storage, and the prepare stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from e2essl.data.files import Layout, open_jet_file
from e2essl.data.preprocess import Normaliser
from e2essl.data.sparse import DenseBuffer, SparseJets, epoch_order, shard
from e2essl.data.splits import check_splits, fraction_size, stratified_splits
from e2essl.data.store import SparseStore, SparseStoreWriter
from e2essl.errors import DataError
from e2essl.stages.prepare import prepare

from .conftest import SMALL, random_images, small_params, write_h5


def test_splits_are_stratified_disjoint_and_cover_everything():
    labels = np.array([1] * 300 + [0] * 700)
    s = stratified_splits(labels, 0.2, 0.125, seed=3)
    everything = np.concatenate([s.train_order, s.val, s.test])
    assert len(everything) == len(set(everything)) == 1000
    assert len(s.test) == 200 and labels[s.test].mean() == pytest.approx(0.3)
    assert len(s.val) == 100 and labels[s.val].mean() == pytest.approx(0.3)
    for f in (0.01, 0.05, 0.1, 0.5, 1.0):
        subset = s.train(f)
        assert len(subset) == fraction_size(700, f)
        assert abs(labels[subset].mean() - 0.3) <= 1.5 / len(subset) + 1e-9  # every prefix stratified
    assert set(s.train(0.01)) <= set(s.train(0.1)) <= set(s.train(1.0))  # nested
    again = stratified_splits(labels, 0.2, 0.125, seed=3)
    np.testing.assert_array_equal(s.train_order, again.train_order)
    other = stratified_splits(labels, 0.2, 0.125, seed=4)
    assert not np.array_equal(s.test, other.test)


def test_too_few_labels_for_a_fraction_is_named():
    labels = np.array([1, 0] * 20)
    s = stratified_splits(labels, 0.2, 0.125, seed=0)
    with pytest.raises(DataError, match=r"label fraction 0\.01 has .* too few labelled jets"):
        check_splits("f.h5", labels, s, [0.01, 1.0])


def test_sparse_round_trip_gather_and_subset():
    images = torch.from_numpy(random_images(9, channels_last=False))
    jets = SparseJets.from_dense(images, labels=np.arange(9) % 2)
    assert torch.equal(jets.dense(), images)
    idx = torch.tensor([8, 0, 3, 3])
    assert torch.equal(jets.gather(idx).dense(), images[idx])
    sub = jets.subset(idx)
    assert torch.equal(sub.dense(), images[idx]) and sub.labels.tolist() == [0, 0, 1, 1]
    assert jets.nbytes < images.numel() * 4


def test_shards_cover_every_jet_exactly_once_per_epoch():
    order = epoch_order(103, seed=1, epoch=4)
    assert torch.equal(order, epoch_order(103, seed=1, epoch=4))
    assert not torch.equal(order, epoch_order(103, seed=1, epoch=5))
    for world in (1, 2, 3):
        seen = torch.cat([torch.cat(list(shard(order, 16, rank, world, drop_last=False))) for rank in range(world)])
        assert sorted(seen.tolist()) == list(range(103))
    # One global batch is the same set of jets whatever the world size.
    first_global = set(next(shard(order, 16, 0, 1, False)).tolist())
    assert first_global == set(torch.cat([next(shard(order, 16, r, 2, False)) for r in range(2)]).tolist())


def test_store_round_trip_and_fraction_subsets(tmp_path):
    images = random_images(30, channels_last=False, seed=5)
    dense = images.reshape(30, -1)
    rank = np.random.default_rng(0).permutation(30)
    with SparseStoreWriter(tmp_path / "s.h5", (3, SMALL, SMALL)) as w:
        for lo in (0, 10, 20):
            block = dense[lo : lo + 10]
            j, p = np.nonzero(block)
            w.append(
                block[j, p],
                p.astype(np.int32),
                np.bincount(j, minlength=10),
                np.arange(lo, lo + 10) % 2,
                np.arange(lo, lo + 10),
                rank[lo : lo + 10],
            )
    with SparseStore(tmp_path / "s.h5") as store:
        full = store.load(1.0)
        by_rank = np.argsort(rank)
        assert torch.equal(full.dense(), torch.from_numpy(images[by_rank]))
        assert full.labels.tolist() == (by_rank % 2).tolist()
        tenth = store.load(0.1)
        assert torch.equal(tenth.dense(), torch.from_numpy(images[by_rank[:3]]))


def test_failed_writer_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError), SparseStoreWriter(tmp_path / "s.h5", (3, 4, 4)):
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_prepare_writes_splits_and_training_only_statistics(tmp_path, small_files):
    params = small_params(tmp_path)
    out = tmp_path / "prepared"
    sizes = prepare(params, small_files["labelled"], out)
    assert sizes["test"]["jets"] == 120 and sizes["val"]["jets"] == 60 and sizes["train"]["jets"] == 420
    assert sizes["fractions"]["0.1"] == {"jets": 42, "quark": 21, "gluon": 21}
    assert json.loads((out / "split_sizes.json").read_text()) == sizes
    with open_jet_file(small_files["labelled"], Layout(image_size=SMALL), require_labels=True) as f:
        everything = f.read_images(0, f.n_jets)
        labels = f.read_labels()
    stores = {s: SparseStore(out / f"{s}.h5") for s in ("train", "val", "test")}
    seen = np.concatenate([st.source_index for st in stores.values()])
    assert sorted(seen.tolist()) == list(range(600))
    train = stores["train"].load(1.0)
    order = stores["train"].source_index[np.argsort(stores["train"].rank)]
    np.testing.assert_array_equal(train.dense().numpy(), everything[order])
    np.testing.assert_array_equal(train.labels.numpy(), labels[order])
    # Statistics come from the training split only.
    norm = json.loads((out / "normalisation.json").read_text())
    train_images = everything[np.sort(order)]
    expected_mean = train_images.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(norm["mean"], expected_mean, rtol=1e-5)
    all_mean = everything.mean(axis=(0, 2, 3))
    assert not np.allclose(norm["mean"], all_mean, rtol=1e-6)
    for st in stores.values():
        st.close()


def test_prepare_refuses_a_single_class_file(tmp_path):
    path = write_h5(tmp_path / "one.h5", X_jets=random_images(50), y=np.ones(50))
    with pytest.raises(DataError, match=r"all 50 jets are quark \(y = 1\): a classifier needs both classes"):
        prepare(small_params(tmp_path), path, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_dense_in_channels_last_order_has_the_same_images():
    images = torch.from_numpy(random_images(5, size=12, channels_last=False, seed=3))
    batch = SparseJets.from_dense(images, np.zeros(5, dtype=np.int64)).gather(torch.tensor([4, 0, 2]))
    cl = batch.dense(channels_last=True)
    assert cl.shape == (3, 3, 12, 12) and cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cl, images[[4, 0, 2]])
    assert torch.equal(cl, batch.dense())


@pytest.mark.parametrize("method", ["log", "e2e", "standardise"])
def test_network_input_is_made_channels_last(method):
    images = torch.from_numpy(random_images(4, size=12, channels_last=False, seed=5))
    batch = SparseJets.from_dense(images, np.zeros(4, dtype=np.int64)).gather(torch.arange(4))
    x = Normaliser(method, mean=[0.1] * 3, std=[2.0] * 3, scale=[1.5] * 3)(batch)
    assert x.shape == (4, 3, 12, 12) and x.is_contiguous(memory_format=torch.channels_last)
    expected = {"log": torch.log1p(images / 1.5), "standardise": (images - 0.1) / 2.0}
    if method in expected:
        assert torch.allclose(x, expected[method])


def test_a_reused_dense_buffer_gives_the_same_input_and_keeps_its_memory():
    images = torch.from_numpy(random_images(6, size=12, channels_last=False, seed=7))
    jets = SparseJets.from_dense(images, np.zeros(6, dtype=np.int64))
    norm = Normaliser("log", mean=[0.0] * 3, std=[1.0] * 3, scale=[1.5] * 3)
    buffer = DenseBuffer()
    first = norm(jets.gather(torch.arange(6)), buffer)
    assert torch.equal(first, norm(jets.gather(torch.arange(6))))
    pointer = first.data_ptr()
    # A smaller batch next: written into the same memory, with nothing left of the previous one.
    second = norm(jets.gather(torch.tensor([5, 1])), buffer)
    assert second.data_ptr() == pointer
    assert torch.equal(second, torch.log1p(images[[5, 1]] / 1.5))
    assert second.is_contiguous(memory_format=torch.channels_last)
