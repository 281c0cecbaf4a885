"""Shared fixtures: tiny data sets written by the tests themselves, and an isolated MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from e2essl.config import Params, Simulate
from e2essl.data.simulate import write_simulated_file

REPO = Path(__file__).resolve().parents[1]
# Tests use small images: ResNet-15 runs on any size, and 40 x 40 is ten times cheaper than 125 x 125.
SMALL = 40


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """No test touches the project's mlruns/ or prints progress bars."""
    store = tmp_path_factory.mktemp("mlruns")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("E2ESSL_PROGRESS", "0")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")  # an earlier test's connect() may have set another
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


def small_params(tmp: Path, **sections) -> Params:
    """Params for tiny runs on SMALL x SMALL images in ``tmp``."""
    raw = {
        "data": {"labelled": str(tmp / "labelled.h5"), "unlabelled": str(tmp / "unlabelled.h5"), "image_size": SMALL, "read_chunk": 64},
        "study": {"fractions": [0.1, 1.0], "seeds": [0]},
        "supervised": {"epochs": 2, "batch_size": 32},
        "evaluate": {"bootstrap": 10},
        "tracking": {"register_models": False},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return Params.model_validate(raw)


@pytest.fixture(scope="session")
def small_files(tmp_path_factory) -> dict[str, Path]:
    """A labelled file (600 jets) and an unlabelled pool (300 jets) of SMALL x SMALL simulated images."""
    folder = tmp_path_factory.mktemp("data")
    labelled, unlabelled = folder / "labelled.h5", folder / "unlabelled.h5"
    write_simulated_file(labelled, 600, 11, Simulate(), labelled=True, image_size=SMALL, progress=False)
    write_simulated_file(unlabelled, 300, 12, Simulate(), labelled=False, image_size=SMALL, progress=False)
    return {"labelled": labelled, "unlabelled": unlabelled, "folder": folder}


def write_h5(path: Path, **arrays) -> Path:
    """Write datasets with plain h5py, the way another program would."""
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


def random_images(n: int, size: int = SMALL, channels: int = 3, seed: int = 0, channels_last: bool = True) -> np.ndarray:
    """Sparse non-negative images like detector data."""
    rng = np.random.default_rng(seed)
    x = rng.exponential(1.0, (n, channels, size, size)).astype(np.float32)
    x[rng.random(x.shape) < 0.9] = 0.0
    return x.transpose(0, 2, 3, 1).copy() if channels_last else x


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None):
    """Run the installed ``e2essl`` command; returns the CompletedProcess."""
    import subprocess
    import sys

    full_env = os.environ | (env or {})
    return subprocess.run([sys.executable, "-m", "e2essl", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)
