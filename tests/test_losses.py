"""Barlow Twins and VICReg against direct transcriptions of the papers, and their invariances."""

from __future__ import annotations

import pytest
import torch

from e2essl.losses import barlow_twins_loss, vicreg_loss


def barlow_twins_by_the_paper(z_a, z_b, lam):
    """Zbontar et al. 2021, eq. (1)-(2), written with loops and no vectorised tricks."""
    n, d = z_a.shape
    za = [[float(z_a[b, i]) for i in range(d)] for b in range(n)]
    zb = [[float(z_b[b, i]) for i in range(d)] for b in range(n)]

    def standardise(z):
        out = [[0.0] * d for _ in range(n)]
        for i in range(d):
            mean = sum(z[b][i] for b in range(n)) / n
            var = sum((z[b][i] - mean) ** 2 for b in range(n)) / n
            for b in range(n):
                out[b][i] = (z[b][i] - mean) / (var + 1e-5) ** 0.5
        return out

    a, b_ = standardise(za), standardise(zb)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[b][i] * b_[b][j] for b in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lam * c_ij**2
    return loss


def vicreg_by_the_paper(z_a, z_b):
    """Bardes et al. 2022, eqs. (1)-(6) with the published weights 25 / 25 / 1."""
    n, d = z_a.shape
    inv = sum(float((z_a[b, i] - z_b[b, i]) ** 2) for b in range(n) for i in range(d)) / (n * d)

    def var_cov(z):
        mean = [sum(float(z[b, i]) for b in range(n)) / n for i in range(d)]
        cov = [
            [sum((float(z[b, i]) - mean[i]) * (float(z[b, j]) - mean[j]) for b in range(n)) / (n - 1) for j in range(d)] for i in range(d)
        ]
        v = sum(max(0.0, 1 - (cov[i][i] + 1e-4) ** 0.5) for i in range(d)) / d
        c = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return v, c

    va, ca = var_cov(z_a)
    vb, cb = var_cov(z_b)
    return 25 * inv + 25 * (va + vb) / 2 + 1 * (ca + cb)


@pytest.fixture
def views():
    torch.manual_seed(0)
    z_a = torch.randn(12, 5, dtype=torch.float64)
    z_b = z_a + 0.7 * torch.randn(12, 5, dtype=torch.float64)
    return z_a, z_b


def test_barlow_twins_matches_the_paper(views):
    z_a, z_b = views
    out = barlow_twins_loss(z_a, z_b, offdiag_weight=0.3)
    assert float(out.loss) == pytest.approx(barlow_twins_by_the_paper(z_a, z_b, 0.3), rel=1e-5)
    assert float(out.loss) == pytest.approx(float(out.parts["on_diagonal"]) + 0.3 * float(out.parts["off_diagonal"]), rel=1e-6)
    # The default off-diagonal weight is 1 / D.
    assert float(barlow_twins_loss(z_a, z_b).loss) == pytest.approx(barlow_twins_by_the_paper(z_a, z_b, 1 / 5), rel=1e-5)


def test_vicreg_matches_the_paper(views):
    z_a, z_b = views
    out = vicreg_loss(z_a, z_b)
    assert float(out.loss) == pytest.approx(vicreg_by_the_paper(z_a, z_b), rel=1e-5)
    assert set(out.parts) == {"invariance", "variance", "covariance"}


def test_vicreg_terms_on_hand_values():
    # Identical views: no invariance term. Columns with std 2 (> 1): no variance penalty.
    # Perfectly correlated columns: covariance term = 2 * (cov^2) / D per view.
    x = torch.tensor([[2.0, 2.0], [-2.0, -2.0], [2.0, 2.0], [-2.0, -2.0]])
    out = vicreg_loss(x, x.clone())
    cov = 16.0 / 3.0  # unbiased covariance of the two identical columns
    assert float(out.parts["invariance"]) == 0.0
    assert float(out.parts["variance"]) == 0.0
    assert float(out.parts["covariance"]) == pytest.approx(2 * (2 * cov**2 / 2), rel=1e-5)
    # Collapsed embeddings: the variance hinge is at its maximum 1 - sqrt(eps).
    flat = torch.zeros(4, 2)
    assert float(vicreg_loss(flat, flat).parts["variance"]) == pytest.approx(1 - 1e-2, rel=1e-6)


def test_barlow_twins_is_invariant_to_a_per_view_affine_rescaling(views):
    z_a, z_b = views
    base = float(barlow_twins_loss(z_a, z_b).loss)
    scaled = float(barlow_twins_loss(3.7 * z_a - 2.0, 0.2 * z_b + 5.0).loss)
    assert scaled == pytest.approx(base, rel=1e-4)


def test_identical_views_drive_the_on_diagonal_term_to_zero():
    z = torch.randn(64, 16)
    out = barlow_twins_loss(z, z.clone())
    assert float(out.parts["on_diagonal"]) < 1e-3
    assert float(barlow_twins_loss(z, torch.randn(64, 16)).parts["on_diagonal"]) > 5


@pytest.mark.parametrize("loss_fn", [barlow_twins_loss, vicreg_loss])
def test_gradients_flow_are_finite_and_computed_in_float32(loss_fn):
    z_a = torch.randn(16, 8, requires_grad=True)
    z_b = torch.randn(16, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn(z_a.bfloat16(), z_b.bfloat16())
    assert out.loss.dtype == torch.float32
    out.loss.backward()
    for g in (z_a.grad, z_b.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_a_short_pretraining_run_lowers_the_loss_and_keeps_the_monitors_sane(tmp_path):
    from e2essl.config import Augment
    from e2essl.data.preprocess import Normaliser
    from e2essl.data.sparse import SparseJets
    from e2essl.models import ResNet15, make_projector
    from e2essl.training.pretrain import Monitor, PretrainPlan, SiameseModel, train_ssl

    from .conftest import random_images

    torch.manual_seed(0)
    jets = SparseJets.from_dense(torch.from_numpy(random_images(96, size=24, channels_last=False, seed=4)))
    labelled = SparseJets.from_dense(torch.from_numpy(random_images(40, size=24, channels_last=False, seed=5)), [0, 1] * 20)
    norm = Normaliser("log", mean=[0.1] * 3, std=[1.0] * 3, scale=[1.0] * 3)
    model = SiameseModel(ResNet15(), make_projector(32, [32, 32]))
    plan = PretrainPlan("barlow_twins", epochs=4, batch_size=32, lr=3e-3, weight_decay=0.0, seed=1, knn_k=5)
    history = train_ssl(
        model,
        jets,
        norm,
        Augment(),
        plan,
        torch.device("cpu"),
        Monitor(jets, labelled, labelled),
        str(tmp_path / "c.pt"),
        "fp",
        progress=False,
    )
    assert history[-1].loss < 0.8 * history[0].loss
    assert all(1.0 <= h.rank_features <= 32 and 1.0 <= h.rank_embeddings <= 32 for h in history)
    assert history[-1].knn_val_auc is not None and 0.0 <= history[-1].knn_val_auc <= 1.0
    assert set(history[-1].terms) == {"on_diagonal", "off_diagonal"}
