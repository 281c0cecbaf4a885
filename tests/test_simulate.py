"""The built-in simulator: deterministic, physical, and a fair (not trivial) quark/gluon task."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from e2essl.config import Simulate
from e2essl.data.simulate import TOWER, simulate_jets, write_simulated_file
from e2essl.observables import jet_observables


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_same_seed_gives_a_bit_identical_file_and_another_seed_does_not(tmp_path):
    cfg = Simulate()
    a = write_simulated_file(tmp_path / "a.h5", 300, 5, cfg, labelled=True, image_size=40, progress=False)
    b = write_simulated_file(tmp_path / "b.h5", 300, 5, cfg, labelled=True, image_size=40, progress=False)
    c = write_simulated_file(tmp_path / "c.h5", 300, 6, cfg, labelled=True, image_size=40, progress=False)
    assert _md5(a) == _md5(b)
    assert _md5(a) != _md5(c)


def test_files_follow_the_ml4sci_layout(tmp_path):
    cfg = Simulate()
    lab = write_simulated_file(tmp_path / "l.h5", 100, 1, cfg, labelled=True, progress=False)
    pool = write_simulated_file(tmp_path / "u.h5", 100, 2, cfg, labelled=False, progress=False)
    with h5py.File(lab) as f:
        assert f["X_jets"].shape == (100, 125, 125, 3) and f["X_jets"].dtype == np.float32
        assert sorted(f.keys()) == ["X_jets", "m0", "pt", "y"]
        assert f["y"][()].sum() == 50  # exactly balanced, y = 1 quark
        x = f["X_jets"][()]
    with h5py.File(pool) as f:
        assert sorted(f.keys()) == ["X_jets", "m0", "pt"]  # no labels, fraction not stored
        assert "quark_fraction" not in f.attrs
    assert (x >= 0).all() and np.isfinite(x).all()
    assert (x > 0).mean() < 0.05  # sparse, like detector images
    # HCAL is read out in 5 x 5 towers: every tower block is constant.
    hcal = x[..., 2].reshape(100, 25, TOWER, 25, TOWER)
    assert np.allclose(hcal, hcal[:, :, :1, :, :1])


@pytest.fixture(scope="module")
def sample():
    chunks = list(simulate_jets(1536, 21, Simulate()))
    images = np.concatenate([c.images for c in chunks]).transpose(0, 3, 1, 2)
    return images, np.concatenate([c.y for c in chunks]), np.concatenate([c.m0 for c in chunks])


def test_gluons_have_more_constituents_and_are_wider(sample):
    images, y, m0 = sample
    obs = jet_observables(images)
    pixels = obs["pixels_ch0"] + obs["pixels_ch1"] + obs["pixels_ch2"]
    assert pixels[y == 0].mean() > 1.1 * pixels[y == 1].mean()
    assert obs["width"][y == 0].mean() > 1.1 * obs["width"][y == 1].mean()
    assert m0[y == 0].mean() > m0[y == 1].mean()


def test_the_task_is_hard_like_real_data(sample):
    """The best single observable separates quark from gluon with ROC AUC near 0.65-0.75, not 0.95."""
    images, y, m0 = sample
    obs = jet_observables(images)
    candidates = {
        "track multiplicity": obs["pixels_ch0"],
        "total multiplicity": obs["pixels_ch0"] + obs["pixels_ch1"] + obs["pixels_ch2"],
        "width": obs["width"],
        "mass": m0,
    }
    aucs = {name: max(roc_auc_score(y, v), 1 - roc_auc_score(y, v)) for name, v in candidates.items()}
    best = max(aucs.values())
    assert 0.63 <= best <= 0.78, aucs
    assert min(aucs.values()) > 0.58, aucs  # every classic observable carries some information
