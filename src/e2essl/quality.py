"""How close generated jets are to real ones, in physics terms (REFERENCE.md).

* 1-D Wasserstein distance per observable (scipy), also divided by the real spread so that
  observables in different units compare;
* Frechet and kernel physics distances (FPD, KPD) over the standardised observable vector, as in
  the JetNet package: FPD is the Frechet distance of Gaussian fits, KPD the unbiased squared MMD
  with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``;
* classifier two-sample tests: the ROC AUC, on held-out jets, of a classifier told to separate
  real from generated, once from the images (a small CNN, ``c2st_auc``) and once from the
  observables (gradient-boosted trees, ``c2st_observables_auc``). 0.5 means indistinguishable.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg
from scipy.stats import wasserstein_distance
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from torch import nn

from e2essl.observables import intensity_spectrum, jet_observables, observable_matrix


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance between Gaussian fits of two (N, d) samples."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    covmean = covmean.real
    return float(max(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean), 0.0))


def kernel_distance(x: np.ndarray, y: np.ndarray, n_subsets: int = 10, subset_size: int = 500, seed: int = 0) -> tuple[float, float]:
    """Unbiased squared MMD with the cubic polynomial kernel, averaged over random subsets: (mean, std)."""
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    m = min(subset_size, len(x), len(y))
    kernel = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    values = []
    for _ in range(n_subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        kxx, kyy, kxy = kernel(a, a), kernel(b, b), kernel(a, b)
        mmd = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


def _small_cnn(channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 16, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 1),
    )


def c2st_images(real: np.ndarray, fake: np.ndarray, epochs: int, seed: int = 0, batch_size: int = 64) -> float:
    """Held-out ROC AUC of a small CNN trained to tell real from generated log-energy images."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    x = np.log1p(np.concatenate([real, fake]).astype(np.float32))
    y = np.concatenate([np.ones(len(real)), np.zeros(len(fake))]).astype(np.float32)
    perm = rng.permutation(len(x))
    x, y = torch.from_numpy(x[perm]), torch.from_numpy(y[perm])
    n_train = len(x) // 2
    model = _small_cnn(x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n_train, generator=gen)
        for lo in range(0, n_train, batch_size):
            idx = order[lo : lo + batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(model(x[idx]).squeeze(1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(x[lo : lo + 256]).squeeze(1) for lo in range(n_train, len(x), 256)]).numpy()
    return float(roc_auc_score(y[n_train:].numpy(), scores))


def c2st_observables(real_obs: np.ndarray, fake_obs: np.ndarray, seed: int = 0) -> float:
    """Held-out ROC AUC of gradient-boosted trees telling real from generated observable vectors."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([real_obs, fake_obs])
    y = np.concatenate([np.ones(len(real_obs)), np.zeros(len(fake_obs))])
    perm = rng.permutation(len(x))
    x, y = x[perm], y[perm]
    half = len(x) // 2
    clf = HistGradientBoostingClassifier(max_iter=100, random_state=seed).fit(x[:half], y[:half])
    return float(roc_auc_score(y[half:], clf.predict_proba(x[half:])[:, 1]))


def compare(real: np.ndarray, fake: np.ndarray, c2st_epochs: int = 5, seed: int = 0) -> dict:
    """All quality numbers for raw-energy images (N, C, H, W) of real and generated jets."""
    real_obs, fake_obs = jet_observables(real), jet_observables(fake)
    xr, names = observable_matrix(real_obs)
    xf, _ = observable_matrix(fake_obs)
    mean, std = xr.mean(0), xr.std(0) + 1e-12
    zr, zf = (xr - mean) / std, (xf - mean) / std
    varying = xr.std(0) > 0  # constant observables (e.g. empty outer annuli) make the covariance singular
    w1 = {name: float(wasserstein_distance(xr[:, i], xf[:, i])) for i, name in enumerate(names)}
    w1_rel = {name: w1[name] / float(std[i]) for i, name in enumerate(names)}
    spectrum_r, spectrum_f = intensity_spectrum(real), intensity_spectrum(fake)
    centres = np.arange(spectrum_r.shape[1])
    spectrum_w1 = [float(wasserstein_distance(centres, centres, r + 1e-12, f + 1e-12)) for r, f in zip(spectrum_r, spectrum_f, strict=True)]
    kpd, kpd_err = kernel_distance(zr[:, varying], zf[:, varying], seed=seed)
    return {
        "fpd": frechet_distance(zr[:, varying], zf[:, varying]),
        "kpd": kpd,
        "kpd_std": kpd_err,
        "c2st_auc": c2st_images(real, fake, c2st_epochs, seed),
        "c2st_observables_auc": c2st_observables(xr, xf, seed),
        "w1": w1,
        "w1_relative": w1_rel,
        "w1_relative_mean": float(np.mean(list(w1_rel.values()))),
        "intensity_w1_bins": spectrum_w1,
    }
