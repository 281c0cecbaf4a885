"""Classifier metrics (scikit-learn underneath) and representation monitors.

Convention: the positive class is the quark (y = 1); scores are quark probabilities.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score, roc_curve


def gluon_efficiency_at(labels: np.ndarray, scores: np.ndarray, quark_efficiency: np.ndarray) -> np.ndarray:
    """The lowest gluon efficiency at each quark efficiency, interpolated linearly along the ROC curve."""
    fpr, tpr, _ = roc_curve(labels, scores)
    # Where several points share a quark efficiency, the first has the lowest gluon efficiency.
    tpr_unique, first = np.unique(tpr, return_index=True)
    return np.interp(quark_efficiency, tpr_unique, fpr[first])


def rejection_at(labels: np.ndarray, scores: np.ndarray, signal_efficiency: float = 0.5) -> float:
    """Gluon rejection 1 / epsilon_g at the threshold that keeps ``signal_efficiency`` of quarks."""
    eps_g = float(gluon_efficiency_at(labels, scores, np.array([signal_efficiency]))[0])
    return 1.0 / eps_g if eps_g > 0 else math.inf


def classifier_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """ROC AUC, accuracy (threshold 0.5), binary cross-entropy and gluon rejection at 50 % quark efficiency."""
    labels = np.asarray(labels).astype(np.int64)
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    return {
        "roc_auc": float(roc_auc_score(labels, probs)),
        "accuracy": float(np.mean((probs >= 0.5) == labels)),
        "loss": float(log_loss(labels, probs, labels=[0, 1])),
        "rejection_at_50": rejection_at(labels, probs, 0.5),
    }


def bootstrap_auc(labels: np.ndarray, scores: np.ndarray, n_boot: int, seed: int = 0) -> tuple[float, float]:
    """Standard deviation and 68 % interval half-width of the ROC AUC over bootstrap resamples.

    Returns (std, half-width of the central 68 % interval); (nan, nan) for ``n_boot = 0``.
    """
    if n_boot <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    n = len(labels)
    aucs = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        if labels[idx].min() == labels[idx].max():
            continue
        aucs.append(roc_auc_score(labels[idx], scores[idx]))
    aucs = np.asarray(aucs)
    lo, hi = np.percentile(aucs, [16, 84])
    return float(aucs.std(ddof=1)), float((hi - lo) / 2)


def roc_points(labels: np.ndarray, scores: np.ndarray, n_points: int = 101) -> dict[str, list[float]]:
    """The ROC curve on a fixed grid of quark efficiencies: gluon efficiency at each."""
    grid = np.linspace(0.0, 1.0, n_points)
    return {"quark_efficiency": grid.tolist(), "gluon_efficiency": gluon_efficiency_at(labels, scores, grid).tolist()}


def effective_rank(embeddings: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of centred (N, D) embeddings (Roy & Vetterli 2007).

    Between 1 (everything on one line: collapse) and min(N, D) (all directions used).
    """
    z = embeddings.float() - embeddings.float().mean(0, keepdim=True)
    s = torch.linalg.svdvals(z)
    p = s / s.sum().clamp_min(1e-12)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def knn_auc(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, k: int = 20) -> float:
    """ROC AUC of a cosine-similarity kNN classifier: the score is the fraction of quarks among the k
    nearest training neighbours. A label-light monitor of what the features know."""
    a = torch.nn.functional.normalize(train_x.float(), dim=1)
    b = torch.nn.functional.normalize(test_x.float(), dim=1)
    k = min(k, len(a))
    scores = []
    for chunk in b.split(1024):
        nearest = (chunk @ a.T).topk(k, dim=1).indices  # (n, k)
        scores.append(train_y[nearest].float().mean(1))
    score = torch.cat(scores).cpu().numpy()
    labels = test_y.cpu().numpy()
    if labels.min() == labels.max():
        return math.nan
    return float(roc_auc_score(labels, score))
