"""The whole pipeline: `dvc repro` on tiny simulated data in a copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from e2essl.config import params_from_dict

from .conftest import REPO, SMALL

pytestmark = pytest.mark.slow

TINY = {
    "data": {"image_size": SMALL, "read_chunk": 64},
    "simulate": {"n_labelled": 400, "n_unlabelled": 200},
    "study": {"fractions": [0.1, 1.0], "seeds": [0, 1]},
    "train_gan": {"epochs": 1, "batch_size": 32, "base_channels": 8, "latent_dim": 16},
    "generate": {"n_jets": 200, "n_compare": 100, "c2st_epochs": 1, "batch_size": 100},
    "pretrain": {"epochs": 1, "batch_size": 64, "projector": [64, 64]},
    "supervised": {"epochs": 2, "batch_size": 32},
    "evaluate": {"bootstrap": 10},
    "report": {"embedding_jets": 60},
}


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _copy_repository(dest: Path) -> None:
    """The files git would check out (tracked, plus new files not ignored), as a fresh clone has them."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    )
    for rel in listed.stdout.splitlines():
        src = REPO / rel
        if src.is_file() and not rel.startswith(("data.dvc", "dvc.lock")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A repository copy with tiny params and data, after one `dvc repro`."""
    root = tmp_path_factory.mktemp("project")
    _copy_repository(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    params_from_dict(params)  # the tiny profile is itself valid
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "E2ESSL_PROGRESS": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own store: <root>/mlruns/mlflow.db
    _run(["git", "init", "-q"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], root, env)
    _run([sys.executable, "-m", "e2essl", "simulate"], root, env)
    _run(["dvc", "add", "data", "-q"], root, env)
    repro = _run(["dvc", "repro"], root, env, timeout=1200)
    return {"root": root, "env": env, "repro": repro}


def test_repro_runs_every_stage_and_leaves_dvc_clean(project):
    root, env = project["root"], project["env"]
    for stage in (
        "prepare",
        "train_gan",
        "generate",
        "pretrain",
        "scratch@0.1-0",
        "finetune@1.0-1",
        "linear_probe@0.1-1",
        "evaluate",
        "report",
        "register",
    ):
        assert f"Running stage '{stage}'" in project["repro"].stdout
    status = _run(["dvc", "status"], root, env)
    assert "up to date" in status.stdout
    again = _run(["dvc", "repro"], root, env)
    assert "Running stage" not in again.stdout
    forced = _run(["dvc", "repro", "-f", "-s", "register"], root, env)  # as after deleting mlruns/
    assert "Running stage 'register'" in forced.stdout


def test_a_change_anywhere_in_the_code_makes_every_stage_stale_and_bytecode_does_not(project):
    # The stages run code from all over the package (the data layer, augmentations, shared training
    # helpers); a change to any of it must not leave outputs made by the old code looking up to date.
    root, env = project["root"], project["env"]
    shared = root / "src/e2essl/data/sparse.py"
    original = shared.read_text()
    cache = root / "src/e2essl/__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "sparse.cpython-311.pyc").write_bytes(b"bytecode")
    try:
        assert "up to date" in _run(["dvc", "status"], root, env).stdout  # bytecode is ignored
        shared.write_text(original + "\n# changed\n")
        stale = _run(["dvc", "status"], root, env).stdout
        for stage in ("prepare", "train_gan", "generate", "pretrain", "scratch@0.1-0", "finetune@1.0-1", "evaluate", "report"):
            assert f"{stage}:" in stale, stale
    finally:
        shared.write_text(original)
        shutil.rmtree(cache)
    assert "up to date" in _run(["dvc", "status"], root, env).stdout


def test_outputs_metrics_and_report(project):
    root, env = project["root"], project["env"]
    summary = json.loads((root / "outputs/evaluate/summary.json").read_text())
    assert set(summary) == {"scratch", "finetune", "linear_probe"}
    for arm in summary.values():
        assert set(arm) == {"10pct", "100pct"}
        for entry in arm.values():
            assert entry["n_seeds"] == 2 and 0 <= entry["roc_auc_mean"] <= 1
    report = (root / "reports/report.md").read_text()
    assert "| scratch | 100% |" in report and "finetuned (pretrained)" in report
    for png in ("roc_curves", "auc_vs_fraction", "validation_curves", "embeddings", "pretraining"):
        assert (root / "reports" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads(_run(["dvc", "metrics", "show", "--json"], root, env).stdout)
    flat = json.dumps(metrics)
    assert "roc_auc_mean" in flat and "c2st_auc" in flat and "train" in flat
    quality = json.loads((root / "outputs/generate/quality.json").read_text())
    assert 0 <= quality["c2st_auc"] <= 1 and quality["fpd"] >= 0


def test_plots_render_offline(project):
    root, env = project["root"], project["env"]
    _run(["dvc", "plots", "show", "-o", "plots_out"], root, env)
    html = (root / "plots_out" / "index.html").read_text()
    assert "cdn.jsdelivr" not in html and "<script src=" not in html  # everything inlined
    assert "vega" in html.lower() and "<img" in html


def test_mlflow_runs_registry_and_predict(project):
    root, env = project["root"], project["env"]
    script = """
import json, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri('sqlite:///' + __import__('os').getcwd() + '/mlruns/mlflow.db')
c = MlflowClient()
exp = c.get_experiment_by_name('e2essl')
runs = c.search_runs([exp.experiment_id], max_results=1000)
names = sorted({r.info.run_name for r in runs})
parents = {r.data.tags['mlflow.parentRunId'] for r in runs if 'mlflow.parentRunId' in r.data.tags}
names_ = ['e2essl-gan', 'e2essl-ssl-encoder', 'e2essl-scratch', 'e2essl-finetuned', 'e2essl-linear-probe']
versions = {n: len(c.search_model_versions(f"name = '{n}'")) for n in names_}
champ = c.get_model_version_by_alias('e2essl-finetuned', 'champion')
best = max(c.search_model_versions("name = 'e2essl-finetuned'"), key=lambda v: float(v.tags['val_auc']))
out = {'names': names, 'parents': len(parents), 'versions': versions, 'champion': str(champ.version), 'best': str(best.version)}
print(json.dumps(out))
"""
    out = json.loads(_run([sys.executable, "-c", script], root, env).stdout)
    assert {"prepare", "train_gan", "generate", "pretrain", "scratch@0.1-0", "finetune@1.0-1", "evaluate", "report", "register"} <= set(
        out["names"]
    )
    assert out["parents"] == 1  # every stage of this pipeline run nests under one parent run
    assert out["versions"] == {
        "e2essl-gan": 1,
        "e2essl-ssl-encoder": 1,
        "e2essl-scratch": 4,
        "e2essl-finetuned": 4,
        "e2essl-linear-probe": 4,
    }
    assert out["champion"] == out["best"]
    env_np = env | {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    _run(
        [
            sys.executable,
            "-m",
            "e2essl",
            "predict",
            "--model",
            "models:/e2essl-finetuned@champion",
            "--input",
            "data/quark_gluon_simulated.h5",
            "--output",
            "p.csv",
        ],
        root,
        env_np,
    )
    assert len((root / "p.csv").read_text().splitlines()) == 401


def test_an_experiment_in_a_temporary_workspace_logs_to_the_project_store(project):
    root, env = project["root"], project["env"]
    _run(["git", "add", "-A"], root, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "after repro"], root, env)
    done = _run(["dvc", "exp", "run", "--temp", "-S", "evaluate.bootstrap=5", "-n", "fewer-boots"], root, env, timeout=1200)
    assert "Running stage 'evaluate'" in done.stdout
    assert "Running stage 'scratch" not in done.stdout  # restored from the cache, not retrained
    script = (
        "import mlflow, os; mlflow.set_tracking_uri('sqlite:///' + os.getcwd() + '/mlruns/mlflow.db');"
        "print(len(mlflow.search_runs(experiment_names=['e2essl'], filter_string=\"tags.`dvc.experiment` = 'fewer-boots'\")))"
    )
    assert int(_run([sys.executable, "-c", script], root, env).stdout.strip()) == 1
    assert not list((root / ".dvc" / "tmp").rglob("mlflow.db"))


def test_a_fresh_clone_regenerates_the_default_data_bit_identically(tmp_path):
    """`make run` simulates data/ on a fresh clone; it must match data.dvc, so `dvc status` is clean."""
    _copy_repository(tmp_path)
    shutil.copy2(REPO / "data.dvc", tmp_path / "data.dvc")
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "E2ESSL_PROGRESS": "0"}
    _run(["git", "init", "-q"], tmp_path, env)
    _run([sys.executable, "-m", "e2essl", "simulate"], tmp_path, env)
    _run(["dvc", "add", "data", "-q"], tmp_path, env)  # hashes what was simulated (the cache is empty here)
    assert (tmp_path / "data.dvc").read_text() == (REPO / "data.dvc").read_text()
    assert "up to date" in _run(["dvc", "status", "data.dvc"], tmp_path, env).stdout
