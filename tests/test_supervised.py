"""The supervised loop: resumes exactly, is deterministic, selects on validation; metrics match sklearn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from e2essl.checkpoint import load_checkpoint
from e2essl.data.preprocess import Normaliser
from e2essl.data.sparse import SparseJets
from e2essl.metrics import bootstrap_auc, classifier_metrics, effective_rank, knn_auc, rejection_at
from e2essl.models import ResNet15
from e2essl.training.supervised import SupervisedPlan, train_supervised

from .conftest import random_images


def _toy_jets(n, seed):
    """Quark-like jets have more energy in the centre: learnable in a couple of epochs."""
    images = random_images(n, size=24, channels_last=False, seed=seed)
    labels = np.arange(n) % 2
    images[labels == 1, :, 10:14, 10:14] += 3.0
    return SparseJets.from_dense(torch.from_numpy(images), labels)


NORM = Normaliser("log", mean=[0.1] * 3, std=[1.0] * 3, scale=[1.0] * 3)


@pytest.fixture
def one_thread():
    """Bit-identical weights need one intra-op thread: with two, oneDNN's convolutions on this CPU now
    and then differ in the last bit (measured: about one run pair in five; README, Determinism)."""
    yield from _threads(1)


@pytest.fixture
def two_threads():
    yield from _threads(2)


def _threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(before)


def _train(tmp_path, epochs=3, resume=None, on_epoch=None, ckpt="c.pt"):
    torch.manual_seed(0)
    model = ResNet15().to(memory_format=torch.channels_last)
    plan = SupervisedPlan(epochs=epochs, batch_size=16, schedule="cosine", seed=7)
    result = train_supervised(
        model,
        [{"params": list(model.parameters()), "lr": 1e-3}],
        _toy_jets(96, 1),
        _toy_jets(48, 2),
        NORM,
        plan,
        torch.device("cpu"),
        str(tmp_path / ckpt),
        "fp",
        resume=resume,
        on_epoch=on_epoch,
        progress=False,
    )
    return model, result


def test_same_seed_same_result_and_selection_on_validation(tmp_path, one_thread):
    model_a, a = _train(tmp_path, ckpt="a.pt")
    model_b, b = _train(tmp_path, ckpt="b.pt")
    assert [h.val_auc for h in a.history] == [h.val_auc for h in b.history]
    for k in model_a.state_dict():
        assert torch.equal(model_a.state_dict()[k], model_b.state_dict()[k])
    best = max(a.history, key=lambda h: h.val_auc)
    assert a.best_epoch == best.epoch and a.best_val_auc == best.val_auc
    assert a.best_val_auc > 0.8  # the toy task is learnt


def test_with_two_threads_the_same_seed_agrees_to_float_rounding(tmp_path, two_threads):
    model_a, a = _train(tmp_path, ckpt="a.pt")
    model_b, b = _train(tmp_path, ckpt="b.pt")
    assert [h.val_auc for h in a.history] == pytest.approx([h.val_auc for h in b.history], abs=1e-3)
    assert a.best_epoch == b.best_epoch
    for k, v in model_a.state_dict().items():
        assert torch.allclose(v.float(), model_b.state_dict()[k].float(), atol=1e-4), k


def test_small_subsets_make_at_least_min_steps_per_epoch(tmp_path, monkeypatch):
    import e2essl.training.supervised as supervised

    batch_sizes = []
    real_loss = supervised.supervised_loss

    def counting_loss(net, batch, *args, **kwargs):
        batch_sizes.append(batch.size)
        return real_loss(net, batch, *args, **kwargs)

    monkeypatch.setattr(supervised, "supervised_loss", counting_loss)
    model = ResNet15()
    plan = SupervisedPlan(epochs=1, batch_size=16, schedule="constant", seed=7, min_steps_per_epoch=20)
    params = [{"params": list(model.parameters()), "lr": 1e-3}]
    train_supervised(
        model, params, _toy_jets(40, 1), _toy_jets(16, 2), NORM, plan, torch.device("cpu"), str(tmp_path / "c.pt"), "fp", progress=False
    )
    # 40 jets in batches of 16 are 3 steps a pass; 20 steps need 7 whole passes, each jet seen 7 times.
    assert len(batch_sizes) == 21 and sum(batch_sizes) == 7 * 40


def test_a_crash_and_resume_ends_with_the_uninterrupted_weights(tmp_path, one_thread):
    straight, result = _train(tmp_path, ckpt="straight.pt")

    class Crash(Exception):
        pass

    def crash_in_epoch_3(record):
        if record.epoch == 3:
            raise Crash  # after epoch 3 trained, before its checkpoint: epoch 2's is the last good one

    with pytest.raises(Crash):
        _train(tmp_path, ckpt="crashy.pt", on_epoch=crash_in_epoch_3)
    state = load_checkpoint(tmp_path / "crashy.pt", "fp")
    assert state["epoch"] == 1  # 0-based: epochs 1 and 2 were saved
    resumed, resumed_result = _train(tmp_path, ckpt="crashy.pt", resume=state)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert [h.val_auc for h in resumed_result.history] == [h.val_auc for h in result.history]


def test_classifier_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 20000)
    probs = 1 / (1 + np.exp(-(labels + rng.normal(0, 1.2, 20000) - 0.5)))
    m = classifier_metrics(labels, probs)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, probs >= 0.5))
    assert m["loss"] == pytest.approx(log_loss(labels, probs))
    # Brute force: cut at the median quark score, count the gluons that pass.
    cut = np.median(probs[labels == 1])
    eps_g = np.mean(probs[labels == 0] >= cut)
    assert m["rejection_at_50"] == pytest.approx(1 / eps_g, rel=0.01)


def test_rejection_on_hand_made_scores():
    # Quarks score 0.6..0.9, gluons 0.1..0.7: at 50 % quark efficiency (threshold ~0.75) no gluon passes
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.65])
    assert rejection_at(labels, scores, 0.5) == np.inf
    assert rejection_at(labels, scores, 1.0) == pytest.approx(1 / 0.25)


def test_bootstrap_spread_shrinks_with_more_jets():
    rng = np.random.default_rng(1)

    def spread(n):
        y = rng.integers(0, 2, n)
        s = y + rng.normal(0, 1.5, n)
        return bootstrap_auc(y, s, 200, seed=0)[0]

    small, large = spread(200), spread(5000)
    assert 0 < large < small / 3


def test_effective_rank_and_knn_monitors():
    torch.manual_seed(0)
    spread_out = torch.randn(500, 16)
    collapsed = torch.randn(500, 1) @ torch.randn(1, 16) + 1e-4 * torch.randn(500, 16)
    assert effective_rank(spread_out) > 12
    assert effective_rank(collapsed) < 1.5
    y = torch.arange(400) % 2
    informative = torch.randn(400, 8) + 2.0 * y[:, None]
    assert knn_auc(informative[:300], y[:300], informative[300:], y[300:], k=10) > 0.9
    noise = torch.randn(400, 8)
    assert abs(knn_auc(noise[:300], y[:300], noise[300:], y[300:], k=10) - 0.5) < 0.15
