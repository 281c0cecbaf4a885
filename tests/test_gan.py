"""The GAN, the physics observables that judge it, and the distances between samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from e2essl.data.sparse import SparseJets
from e2essl.models.gan import Discriminator, GanConfig, Generator, from_log_space, to_log_space
from e2essl.observables import PIXEL, jet_observables
from e2essl.quality import c2st_observables, compare, frechet_distance, kernel_distance
from e2essl.training.gan import GanPlan, sample, train_gan

from .conftest import random_images


@pytest.mark.parametrize(("channels", "size", "hcal"), [(3, 125, 2), (8, 125, None), (3, 40, 2), (8, 64, None)])
def test_generator_and_discriminator_shapes(channels, size, hcal):
    cfg = GanConfig(channels=channels, image_size=size, latent_dim=16, base_channels=8, hcal_channel=hcal, scale=(1.0,) * channels)
    g, d = Generator(cfg), Discriminator(cfg)
    x = g(torch.randn(3, 16))
    assert x.shape == (3, channels, size, size)
    assert (x >= 0).all() and (x == 0).any()  # ReLU output: exact zeros exist
    assert d(x).shape == (3,)
    if hcal is not None:
        towers = x[:, hcal].reshape(3, size // 5, 5, size // 5, 5)
        assert torch.allclose(towers, towers[:, :, :1, :, :1].expand_as(towers))  # HCAL in 5 x 5 towers


def test_log_space_round_trip():
    e = torch.from_numpy(random_images(4, channels_last=False))
    scale = (0.5, 2.0, 3.0)
    torch.testing.assert_close(from_log_space(to_log_space(e, scale), scale), e, rtol=1e-5, atol=1e-6)


def test_observables_on_hand_built_images():
    size = 41  # odd: the centre pixel sits on the jet axis
    img = np.zeros((2, 3, size, size))
    img[0, 1, 20, 20] = 10.0  # one ECAL deposit on the axis
    img[1, 0, 20, 15] = 4.0  # two deposits 5 pixels either side of the axis in phi
    img[1, 2, 20, 25] = 4.0
    obs = jet_observables(img)
    assert obs["energy_ch1"][0] == 10.0 and obs["pixels_ch1"][0] == 1 and obs["pixels_ch0"][0] == 0
    assert obs["width"][0] == pytest.approx(0.0, abs=1e-12)
    assert obs["mass"][0] == pytest.approx(0.0, abs=1e-6)
    dphi = 10 * PIXEL
    assert obs["width"][1] == pytest.approx(5 * PIXEL)
    assert obs["mass"][1] == pytest.approx(math.sqrt(2 * 4.0 * 4.0 * (1 - math.cos(dphi))), rel=1e-6)
    assert obs["radial_profile"][0][0] == pytest.approx(1.0)  # all energy in the innermost annulus
    assert obs["radial_profile"][1].sum() == pytest.approx(1.0)


def test_distances_are_zero_for_identical_samples_and_grow_with_a_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    fpd = [frechet_distance(x, x + s) for s in (0.1, 0.5, 1.0)]
    kpd = [kernel_distance(x, x + s, seed=1)[0] for s in (0.1, 0.5, 1.0)]
    assert fpd == sorted(fpd) and fpd[0] > 0
    assert kpd == sorted(kpd) and kpd[2] > 10 * abs(kernel_distance(x, x.copy(), seed=1)[0])
    assert c2st_observables(x, x + 2.0) > 0.9
    assert abs(c2st_observables(x[:300], x[300:]) - 0.5) < 0.1


def test_compare_real_with_itself_and_with_something_else():
    real = random_images(200, size=24, channels_last=False, seed=1)
    also_real = random_images(200, size=24, channels_last=False, seed=2)
    doubled = 2.0 * also_real
    same = compare(real, also_real, c2st_epochs=2)
    other = compare(real, doubled, c2st_epochs=2)
    assert same["fpd"] < other["fpd"] and same["w1_relative_mean"] < other["w1_relative_mean"]
    assert abs(same["c2st_observables_auc"] - 0.5) < 0.12 and other["c2st_observables_auc"] > 0.9
    assert set(same["w1"]) >= {"energy_ch0", "pixels_ch1", "width", "mass", "radial_profile_0"}


def _tiny_gan(seed=0):
    torch.manual_seed(seed)
    cfg = GanConfig(channels=3, image_size=20, latent_dim=8, base_channels=8, hcal_channel=2, scale=(1.0, 1.0, 1.0))
    return Generator(cfg), Discriminator(cfg)


def test_sampling_is_deterministic():
    g, _ = _tiny_gan()
    a, b = sample(g, 10, 42, 4, torch.device("cpu")), sample(g, 10, 42, 4, torch.device("cpu"))
    assert torch.equal(a, b) and a.shape == (10, 3, 20, 20)
    assert not torch.equal(a, sample(g, 10, 43, 4, torch.device("cpu")))


def test_a_short_training_run_is_finite_and_resumable(tmp_path):
    real = SparseJets.from_dense(torch.from_numpy(random_images(64, size=20, channels_last=False)))
    plan = GanPlan(epochs=2, batch_size=16, lr_generator=2e-4, lr_discriminator=2e-4, betas=(0.0, 0.9), n_critic=1, seed=3)
    g, d = _tiny_gan()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    history = train_gan(g, d, real, plan, torch.device("cpu"), str(tmp_path / "gan.pt"), "fp", progress=False)
    assert len(history) == 2
    for h in history:
        assert all(math.isfinite(v) for v in (h.d_loss, h.g_loss, h.d_real, h.d_fake))
        assert 0 <= h.d_loss <= 4  # the hinge losses of a critic that is neither lost nor perfect
    assert any(not torch.equal(before[k], v) for k, v in g.state_dict().items())
    assert all(torch.isfinite(v).all() for v in g.state_dict().values() if v.is_floating_point())


def test_a_crashed_gan_run_resumes_to_the_uninterrupted_weights(tmp_path):
    from e2essl.checkpoint import load_checkpoint

    real = SparseJets.from_dense(torch.from_numpy(random_images(48, size=20, channels_last=False)))
    plan = GanPlan(epochs=3, batch_size=16, lr_generator=2e-4, lr_discriminator=2e-4, betas=(0.0, 0.9), n_critic=1, seed=3)
    cpu = torch.device("cpu")
    g_ref, d_ref = _tiny_gan()
    train_gan(g_ref, d_ref, real, plan, cpu, str(tmp_path / "ref.pt"), "fp", progress=False)

    class Crash(Exception):
        pass

    def crash(record):
        if record.epoch == 2:
            raise Crash

    g, d = _tiny_gan()
    with pytest.raises(Crash):
        train_gan(g, d, real, plan, cpu, str(tmp_path / "c.pt"), "fp", on_epoch=crash, progress=False)
    g, d = _tiny_gan(seed=99)  # a fresh process would start from other random weights
    train_gan(g, d, real, plan, cpu, str(tmp_path / "c.pt"), "fp", resume=load_checkpoint(tmp_path / "c.pt", "fp"), progress=False)
    for k, v in g_ref.state_dict().items():
        assert torch.equal(v, g.state_dict()[k]), k
