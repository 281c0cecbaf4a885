"""Faults a physicist's overnight run meets: killed jobs, bad files, bad settings, NaN losses,
a broken MLflow store, concurrent logging, untrusted weight files. RELIABILITY.md lists each."""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from e2essl.config import params_from_dict
from e2essl.errors import ConfigError, TrainingError
from e2essl.stages.prepare import prepare

from .conftest import REPO, random_images, small_params, write_h5


def _write_params(folder: Path, **sections) -> Path:
    params = small_params(folder, **sections)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return path


@pytest.fixture
def project(tmp_path, small_files):
    """A folder with tiny params, the small files as data, and prepared splits."""
    for name in ("labelled", "unlabelled"):
        (tmp_path / f"{name}.h5").write_bytes(small_files[name].read_bytes())
    _write_params(tmp_path, pretrain={"epochs": 3, "batch_size": 32, "projector": [32, 32]}, supervised={"epochs": 3, "batch_size": 32})
    prepare(small_params(tmp_path), tmp_path / "labelled.h5", tmp_path / "outputs" / "prepare")
    return tmp_path


def _cli(args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    env = os.environ | {"E2ESSL_PROGRESS": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "e2essl", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def _kill_mid_run(args: list[str], cwd: Path, checkpoint: Path, epoch_seconds: float) -> bool:
    """Start a stage, wait for its first checkpoint, then SIGKILL it at a random moment of a later
    epoch. False if it finished before the kill landed."""
    proc = _cli(args, cwd)
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(random.uniform(0.1, 0.9) * epoch_seconds)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return True


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


STAGES = {
    "pretrain": (["pretrain", "--input", "unlabelled.h5"], "pretrain/pretrain.pt", "encoder.safetensors"),
    "finetune": (
        ["finetune", "--fraction", "1.0", "--seed", "0", "--encoder", "uninterrupted_pretrain/encoder.safetensors"],
        "finetune/f1_s0.pt",
        "model.safetensors",
    ),
}


@pytest.mark.slow
def test_killed_pretrain_and_finetune_resume_to_the_uninterrupted_result(project):
    # One thread: bit-identical weight files (with two, oneDNN now and then differs in the last bit).
    _write_params(
        project,
        base={"threads": 1},
        pretrain={"epochs": 4, "batch_size": 32, "projector": [32, 32]},
        supervised={"epochs": 4, "batch_size": 32},
    )
    for stage, (args, ckpt, weights) in STAGES.items():  # pretrain first: finetune needs its encoder
        start = time.monotonic()
        code, err = _finish(_cli([*args, "--out", f"uninterrupted_{stage}", "--checkpoints", "ck_ref"], project))
        assert code == 0, err
        epoch_seconds = float(
            np.median([float(t) for t in re.findall(r"epoch \d+/4 .* (\d+\.\d)s", err)] or [(time.monotonic() - start) / 8])
        )
        out = f"killed_{stage}"
        for _ in range(3):  # a run that finished before the kill landed is simply tried again
            shutil.rmtree(project / out, ignore_errors=True)
            shutil.rmtree(project / "ck", ignore_errors=True)
            if _kill_mid_run([*args, "--out", out, "--checkpoints", "ck"], project, project / "ck" / ckpt, epoch_seconds):
                break
        else:
            pytest.fail(f"{stage} always finished before it could be killed")
        assert not (project / out / weights).exists()  # no output before the stage finishes
        code, err = _finish(_cli([*args, "--out", out, "--checkpoints", "ck"], project))
        assert code == 0, err
        assert "resuming" in err  # it did pick up the checkpoint
        assert _digest(project / out / weights) == _digest(project / f"uninterrupted_{stage}" / weights), stage
        assert not (project / "ck" / ckpt).exists()  # a finished run removes its checkpoint
        assert [p.name for p in (project / out).iterdir() if ".tmp-" in p.name] == []


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from e2essl.checkpoint import load_checkpoint
    from e2essl.training import supervised as sup

    from .test_supervised import _train

    real_loss, calls = sup.supervised_loss, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 7 else loss  # 6 steps per epoch: NaN in epoch 2

    monkeypatch.setattr(sup, "supervised_loss", poisoned)
    with pytest.raises(TrainingError) as err:
        _train(tmp_path, epochs=3, ckpt="nan.pt")
    assert re.search(
        r"loss became nan at epoch 2, step 2; training stopped and the last good checkpoint is kept at .*nan\.pt", str(err.value)
    )
    state = load_checkpoint(tmp_path / "nan.pt", "fp")
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.parametrize(
    ("setup", "command", "expected"),
    [
        ("missing", ["prepare", "--input", "nope.h5"], "nope.h5: file not found"),
        ("random", ["prepare", "--input", "bad.h5"], "bad.h5: not an HDF5 or Parquet file"),
        ("truncated", ["prepare", "--input", "bad.h5"], "(truncated or corrupt"),
        ("wrong_key", ["prepare", "--input", "bad.h5"], "bad.h5: no dataset 'X_jets' (found: images, y)"),
        ("wrong_rank", ["prepare", "--input", "bad.h5"], "expected (N, H, W, C) with C = 3"),
        ("wrong_size", ["prepare", "--input", "bad.h5"], "images are 30 x 30 pixels, expected 40 x 40"),
        ("channels", ["prepare", "--input", "bad.h5"], "no axis of 3 channels (data.channels is 3)"),
        ("nan", ["prepare", "--input", "bad.h5"], "NaN or inf pixel values in jet 7 (set data.bad_pixels: zero"),
        ("negative", ["prepare", "--input", "bad.h5"], "negative pixel values in jet 7"),
        ("labels", ["prepare", "--input", "bad.h5"], "labels 'y' must be 0 (gluon) or 1 (quark): found 3 at jet 5"),
        ("one_class", ["prepare", "--input", "bad.h5"], "all 60 jets are gluon (y = 0): a classifier needs both classes"),
        ("too_few", ["prepare", "--input", "bad.h5"], "too few labelled jets (60) for the splits and label fractions"),
        ("small_pool", ["pretrain", "--input", "bad.h5"], "holds 60 jets, fewer than pretrain.batch_size (64)"),
    ],
)
def test_bad_inputs_fail_in_one_line_and_leave_outputs_alone(project, setup, command, expected):
    bad = project / "bad.h5"
    images, labels = random_images(60, seed=2), np.arange(60) % 2
    if setup == "random":
        bad.write_bytes(os.urandom(5000))
    elif setup == "truncated":
        write_h5(bad, X_jets=random_images(400), y=np.arange(400) % 2)
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size * 2 // 3])
    elif setup == "wrong_key":
        write_h5(bad, images=images, y=labels)
    elif setup == "wrong_rank":
        write_h5(bad, X_jets=images[..., 0], y=labels)
    elif setup == "wrong_size":
        write_h5(bad, X_jets=random_images(60, size=30), y=labels)
    elif setup == "channels":
        write_h5(bad, X_jets=random_images(60, channels=8), y=labels)
    elif setup in ("nan", "negative"):
        images[7, 3, 3, 0] = np.nan if setup == "nan" else -2.0
        write_h5(bad, X_jets=images, y=labels)
    elif setup == "labels":
        write_h5(bad, X_jets=images, y=np.where(np.arange(60) == 5, 3, labels))
    elif setup == "one_class":
        write_h5(bad, X_jets=images, y=np.zeros(60))
    elif setup == "too_few":
        write_h5(bad, X_jets=images, y=labels)  # 1 % of the training split is not even one jet per class
        _write_params(project, study={"fractions": [0.01, 1.0], "seeds": [0]})
    elif setup == "small_pool":
        write_h5(bad, X_jets=images)
        _write_params(project, pretrain={"batch_size": 64})
    before = {p: _digest(p) for p in (project / "outputs" / "prepare").iterdir()}
    out = "outputs/prepare" if command[0] == "prepare" else "outputs/pretrain"
    code, err = _finish(_cli([*command, "--out", out], project))
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"e2essl {command[0]}: error: ") and expected in lines[-1], err
    assert "Traceback" not in err and sum("error" in line for line in lines) == 1
    assert {p: _digest(p) for p in (project / "outputs" / "prepare").iterdir()} == before  # nothing overwritten
    assert not (project / "outputs" / "pretrain").exists()


def test_bad_pixels_can_be_zeroed_by_choice(project):
    images = random_images(200, seed=4)
    images[7, 3, 3, 0] = np.inf
    write_h5(project / "inf.h5", X_jets=images, y=np.arange(200) % 2)
    _write_params(project, data={"bad_pixels": "zero"})
    code, err = _finish(_cli(["prepare", "--input", "inf.h5", "--out", "zeroed"], project))
    assert code == 0, err
    assert "set 1 NaN/inf/negative pixel values to 0" in err


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("pretrain:\n  lr: -0.001\n", "pretrain.lr: Input should be greater than 0 (got -0.001)"),
        ("study:\n  fractions: [0.1, 1.5]\n", "study.fractions.1: Input should be less than or equal to 1"),
        ("supervised:\n  epochs: many\n", "supervised.epochs: Input should be a valid integer"),
        ("supervised:\n  epoch: 3\n", "supervised.epoch: unknown key"),
        ("prepare:\n  test_fraction: 1.0\n", "prepare.test_fraction: Input should be less than 1"),
    ],
)
def test_invalid_params_stop_before_anything_runs(tmp_path, yaml_text, expected):
    (tmp_path / "params.yaml").write_text(yaml_text)
    code, err = _finish(_cli(["scratch", "--fraction", "0.1", "--seed", "0", "--out", "o"], tmp_path))
    assert code == 1
    assert err.strip().splitlines() == [f"e2essl scratch: error: params.yaml: {expected}" + err.strip().split(expected, 1)[-1]]
    assert not (tmp_path / "o").exists()


@settings(max_examples=50, deadline=None)
@given(lr=st.floats(-10, 10, allow_nan=False), fraction=st.floats(-1, 2, allow_nan=False), epochs=st.integers(-5, 50))
def test_params_validator_accepts_exactly_the_valid_ranges(lr, fraction, epochs):
    raw = {"scratch": {"lr": lr}, "study": {"fractions": [fraction]}, "supervised": {"epochs": epochs}}
    valid = lr > 0 and 0 < fraction <= 1 and epochs > 0
    if valid:
        p = params_from_dict(raw)
        assert p.scratch.lr == lr and p.study.fractions == [fraction]
    else:
        with pytest.raises(ConfigError):
            params_from_dict(raw)


def test_an_unreachable_tracking_store_stops_a_stage_before_training(project):
    env_bad = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "e2essl", "scratch", "--fraction", "1.0", "--seed", "0", "--out", "o"],
        cwd=project,
        env=os.environ | env_bad | {"E2ESSL_PROGRESS": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and time.monotonic() - start < 60
    assert proc.stderr.strip().splitlines()[-1].startswith("e2essl scratch: error: MLflow tracking store http://127.0.0.1:9 is unreachable")
    assert "epoch" not in proc.stderr and not (project / "o").exists()


def test_two_processes_logging_to_one_sqlite_store_at_once(tmp_path):
    script = (
        "import sys; from e2essl.tracking import StageRun\n"
        "for i in range(8):\n"
        "    with StageRun(f'stage{sys.argv[1]}', {'i': i}, {'p': sys.argv[1]}) as r:\n"
        "        [r.log_metrics({'m': float(s)}, step=s) for s in range(15)]\n"
    )
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    procs = [subprocess.Popen([sys.executable, "-c", script, w], env=env, stderr=subprocess.PIPE, text=True) for w in "AB"]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    import sqlite3

    db = sqlite3.connect(tmp_path / "mlflow.db")
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert db.execute("select count(*) from runs").fetchone()[0] == 2 * 8 + 2  # + one parent run each
    assert db.execute("select count(*) from metrics where key = 'm'").fetchone()[0] == 2 * 8 * 15


def test_every_torch_load_in_the_package_refuses_pickled_objects():
    """Weights are safetensors; checkpoints go through torch.load(weights_only=True) only."""
    sources = list((REPO / "src" / "e2essl").rglob("*.py"))
    calls = [(p.name, line.strip()) for p in sources for line in p.read_text().splitlines() if "torch.load(" in line]
    assert calls and all("weights_only=True" in line for _, line in calls), calls
    assert not any(re.search(r"^\s*import (cloud)?pickle|pickle\.load", p.read_text(), re.M) for p in sources)
