"""MLflow: nested runs, registry round trip without pickle, idempotent registration, champion alias."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from e2essl.checkpoint import save_weights
from e2essl.data.preprocess import Normaliser
from e2essl.errors import TrackingError
from e2essl.models import ResNet15
from e2essl.serving import Predictor
from e2essl.tracking import StageRun, connect, image_signature, register_model, set_champion

from .conftest import SMALL, random_images, run_cli, write_h5

NORM = Normaliser("log", mean=[0.1] * 3, std=[1.0] * 3, scale=[1.0] * 3)


def _weights(tmp_path, seed: int, val_auc: float):
    torch.manual_seed(seed)
    model = ResNet15()
    meta = {
        "kind": "classifier",
        "arm": "scratch",
        "model": model.config.to_dict(),
        "normaliser": NORM.to_dict(),
        "image_size": SMALL,
        "val_auc": val_auc,
    }
    return save_weights(tmp_path / f"model{seed}.safetensors", model.state_dict(), meta)


def _register(path, val_auc, stage="scratch"):
    """Train-stage run first (as a stage would), then register into it (as the register stage does)."""
    with StageRun(stage, {"x": {"y": 1}}, {"pipeline": 1}) as run:
        pass
    with StageRun("register", {}, {"pipeline": 1}) as reg:
        version = register_model(
            "e2essl-scratch", "classifier", path, {"val_auc": val_auc}, image_signature((SMALL, SMALL, 3), ()), run.run_id, reg.run_id
        )
    return version, run.run_id


def test_runs_nest_under_one_pipeline_run_per_params():
    import mlflow

    with StageRun("prepare", {"a": 1}, {"p": 1}) as first:
        first.log_metrics({"m": 1.0}, step=1)
    with StageRun("scratch", {"a": 1}, {"p": 1}) as second:
        pass
    with StageRun("scratch", {"a": 1}, {"p": 2}) as third:
        pass
    parent = lambda rid: mlflow.get_run(rid).data.tags["mlflow.parentRunId"]  # noqa: E731
    assert parent(first.run_id) == parent(second.run_id) != parent(third.run_id)
    assert mlflow.get_run(first.run_id).data.params == {"a": "1"}
    assert mlflow.get_run(first.run_id).info.status == "FINISHED"


def test_a_failed_stage_marks_its_run_failed():
    import mlflow

    with pytest.raises(RuntimeError), StageRun("scratch", {}, {"p": 3}) as run:
        raise RuntimeError("boom")
    assert mlflow.get_run(run.run_id).info.status == "FAILED"


def test_registry_round_trip_by_version_and_alias_without_pickle(tmp_path):
    w1, w2 = _weights(tmp_path, 1, 0.61), _weights(tmp_path, 2, 0.66)
    v1, _ = _register(w1, 0.61)
    again, _ = _register(w1, 0.61)
    v2, _ = _register(w2, 0.66)
    assert (v1, again, v2) == ("1", "1", "2")  # the same weights are never registered twice
    from mlflow.tracking import MlflowClient

    mv = MlflowClient().get_model_version("e2essl-scratch", "2")
    assert mv.tags["val_auc"] == "0.66" and mv.run_id == mv.tags["run_id"]  # logged into its training run
    assert set_champion("e2essl-scratch") == "2"
    images = random_images(5)
    write_h5(tmp_path / "jets.h5", X_jets=images)
    expected = Predictor.from_file(w2)(images)
    # A fresh process, pickle deserialisation disabled, loads by alias and by version.
    script = (
        "import sys, mlflow, numpy as np, h5py;"
        "x = h5py.File(sys.argv[1])['X_jets'][()];"
        "a = mlflow.pyfunc.load_model('models:/e2essl-scratch@champion').predict(x);"
        "b = mlflow.pyfunc.load_model('models:/e2essl-scratch/2').predict(x);"
        "np.save(sys.argv[2], np.stack([a, b]))"
    )
    import subprocess
    import sys

    env = os.environ | {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "jets.h5"), str(tmp_path / "out.npy")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    both = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(both[0], expected, rtol=1e-5)
    np.testing.assert_allclose(both[1], expected, rtol=1e-5)
    assert ((both > 0) & (both < 1)).all()
    # The command users run.
    (tmp_path / "params.yaml").write_text(f"data:\n  image_size: {SMALL}\n")
    cli = run_cli("predict", "--model", "models:/e2essl-scratch@champion", "--input", "jets.h5", "--output", "p.csv", cwd=tmp_path, env=env)
    assert cli.returncode == 0, cli.stderr
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "jet,quark_probability" and len(rows) == 6
    np.testing.assert_allclose([float(r.split(",")[1]) for r in rows[1:]], expected, atol=1e-5)


def test_predict_names_a_missing_model(tmp_path):
    write_h5(tmp_path / "jets.h5", X_jets=random_images(2))
    cli = run_cli("predict", "--model", "models:/e2essl-scratch/99", "--input", "jets.h5", "--output", "p.csv", cwd=tmp_path)
    assert cli.returncode == 1
    assert cli.stderr.strip().splitlines()[-1].startswith("e2essl predict: error: models:/e2essl-scratch/99: cannot fetch this model")
    assert not (tmp_path / "p.csv").exists()


def test_champion_follows_the_best_validation_auc(tmp_path):
    versions = [_register(_weights(tmp_path, s, auc), auc)[0] for s, auc in [(3, 0.70), (4, 0.75), (5, 0.72)]]
    assert set_champion("e2essl-scratch") == versions[1]
    from mlflow.tracking import MlflowClient

    assert str(MlflowClient().get_model_version_by_alias("e2essl-scratch", "champion").version) == versions[1]


def test_an_unreachable_store_fails_fast_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(TrackingError) as err:
        connect("e2essl")
    assert time.monotonic() - start < 30
    assert "http://127.0.0.1:9 is unreachable or misconfigured" in str(err.value) and "\n" not in str(err.value)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store's folder should be")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocked}/sub/mlflow.db")
    with pytest.raises(TrackingError, match="unreachable or misconfigured"):
        connect("e2essl")


def test_a_registered_encoder_loads_into_a_fresh_resnet15_by_version(tmp_path):
    from e2essl.stages.supervised import load_encoder
    from e2essl.tracking import model_weights

    torch.manual_seed(3)
    enc = ResNet15()
    meta = {"kind": "encoder", "model": enc.config.to_dict(), "normaliser": NORM.to_dict(), "image_size": SMALL}
    path = save_weights(tmp_path / "encoder.safetensors", enc.encoder_state_dict(), meta)
    with StageRun("register", {}, {"pipeline": 2}) as reg:
        version = register_model("e2essl-ssl-encoder", "encoder", path, {}, image_signature((SMALL, SMALL, 3), (32,)), None, reg.run_id)
    fresh = ResNet15()
    load_encoder(fresh, model_weights(f"models:/e2essl-ssl-encoder/{version}"))
    for k, v in enc.encoder_state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    features = Predictor.from_file(path)(random_images(3))
    assert features.shape == (3, 32)
