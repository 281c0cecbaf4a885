"""MLflow: the only module that imports it.

* Store: ``MLFLOW_TRACKING_URI`` when set, else SQLite at ``<project>/mlruns/mlflow.db`` with
  artifacts under ``<project>/mlruns/artifacts``, always as an absolute path. The project root is
  ``DVC_ROOT`` (DVC sets it for every stage, to the real repository even under
  ``dvc exp run --temp`` or the queue), else the nearest folder above with a dvc.yaml.
* Runs: one per stage execution, named like its DVC stage (``scratch@0.1-2``), nested under one
  parent run per pipeline (same git commit, same params, same DVC experiment name).
* The store is checked at stage start, before any training, and fails in one line.
* Models: logged as MLflow "models from code" (no pickle), weights as safetensors artifacts, the
  e2essl package bundled as code, and registered with one version per trained model. A model
  whose weights are already registered (same SHA-256) is not registered twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from e2essl.checkpoint import file_sha256
from e2essl.errors import TrackingError

log = logging.getLogger(__name__)

CHAMPION = "champion"
PIPELINE_TAG = "e2essl.pipeline"
FINGERPRINT_TAG = "weights_sha256"
# Packages a registered model needs at inference.
MODEL_REQUIREMENTS = ("torch", "numpy", "safetensors", "mlflow")


def find_project_root() -> Path:
    """``DVC_ROOT`` if set, else the nearest folder (from the cwd up) holding dvc.yaml, else the cwd."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists() or (folder / ".dvc").is_dir():
            return folder
    return here


def tracking_uri(root: Path | None = None) -> str:
    """The tracking URI in force: ``MLFLOW_TRACKING_URI`` or the project's SQLite store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = (root or find_project_root()).resolve()
    return f"sqlite:///{root}/mlruns/mlflow.db"


def _local_store_dir(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise store creation and parent-run lookup between processes sharing a local store."""
    folder = _local_store_dir(uri)
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".e2essl.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def git_commit(root: Path) -> str:
    """HEAD's commit hash (with ``-dirty`` when tracked files changed), or ``unknown``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def quiet_mlflow() -> None:
    """No telemetry, no artifact progress bars, no advice about type hints and input examples."""
    import warnings

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow.pyfunc  # noqa: F401  (imported first: its import installs warning filters of its own)

    # MLflow configures its own loggers on import; its INFO lines ("Creating initial MLflow database
    # tables...") would crowd a stage's log.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)

    warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
    warnings.filterwarnings("ignore", message=".*input example was not provided.*")


def connect(experiment: str, root: Path | None = None) -> str:
    """Point MLflow at the store, check it answers, create the experiment if needed; its id.

    Every problem (unreachable server, unwritable folder, broken database) is one TrackingError line.
    """
    quiet_mlflow()
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    import mlflow
    from mlflow.tracking import MlflowClient

    root = (root or find_project_root()).resolve()
    uri = tracking_uri(root)
    try:
        with _store_lock(uri):
            mlflow.set_tracking_uri(uri)
            client = MlflowClient(uri)
            found = client.get_experiment_by_name(experiment)
            if found is not None:
                return found.experiment_id
            folder = _local_store_dir(uri)
            location = (folder / "artifacts").as_uri() if folder else None
            return client.create_experiment(experiment, artifact_location=location)
    except Exception as err:
        raise TrackingError(f"MLflow tracking store {uri} is unreachable or misconfigured: {type(err).__name__}: {err}") from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = value
    return out


class StageRun:
    """An MLflow run for one stage execution (a no-op when ``enabled`` is False).

    Use as a context manager; the run ends FINISHED, or FAILED when an exception escapes.
    ``resume_run_id`` continues an earlier run (after a crash) instead of starting one.
    """

    def __init__(
        self,
        stage: str,
        params: dict[str, Any],
        pipeline_params: dict[str, Any],
        experiment: str = "e2essl",
        enabled: bool = True,
        resume_run_id: str | None = None,
    ) -> None:
        self.stage = stage
        self.name = os.environ.get("DVC_STAGE", stage)
        self.params = flatten(params)
        self.pipeline_params = pipeline_params
        self.experiment = experiment
        self.enabled = enabled
        self.resume_run_id = resume_run_id
        self.run_id: str | None = None
        self.root = find_project_root()

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> StageRun:
        if not self.enabled:
            return self
        import mlflow

        experiment_id = connect(self.experiment, self.root)
        commit = git_commit(self.root)
        tags = {"e2essl.stage": self.stage, "dvc.stage": self.name, "git.commit": commit, "mlflow.source.git.commit": commit}
        try:
            if self.resume_run_id and _run_exists(self.resume_run_id):
                run = mlflow.start_run(run_id=self.resume_run_id)
                log.info("MLflow: resuming run %s (%s)", self.name, self.resume_run_id)
            else:
                parent = self._pipeline_run(experiment_id, commit)
                run = mlflow.start_run(experiment_id=experiment_id, run_name=self.name, parent_run_id=parent, tags=tags)
                mlflow.log_params({k: _param_value(v) for k, v in self.params.items()})
        except Exception as err:
            raise TrackingError(f"MLflow: cannot start a run for {self.name} in {tracking_uri(self.root)}: {err}") from None
        self.run_id = run.info.run_id
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.enabled or self.run_id is None:
            return
        import mlflow

        status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
        mlflow.end_run(status=status)

    def _pipeline_run(self, experiment_id: str, commit: str) -> str:
        """The parent run of this pipeline execution: found by its key, or created."""
        import hashlib

        from mlflow.tracking import MlflowClient

        exp_name = os.environ.get("DVC_EXP_NAME", "")
        key = hashlib.sha256(json.dumps([commit, self.pipeline_params, exp_name], sort_keys=True, default=str).encode()).hexdigest()[:12]
        client = MlflowClient()
        with _store_lock(tracking_uri(self.root)):
            found = client.search_runs(
                [experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'", max_results=1, order_by=["attributes.start_time ASC"]
            )
            if found:
                return found[0].info.run_id
            name = exp_name or f"pipeline-{commit[:7]}-{key[:6]}"
            run = client.create_run(
                experiment_id, run_name=name, tags={PIPELINE_TAG: key, "git.commit": commit, "dvc.experiment": exp_name or "workspace"}
            )
            client.log_batch(run.info.run_id, params=[_mlflow_param(k, v) for k, v in flatten(self.pipeline_params).items()])
            client.set_terminated(run.info.run_id, "FINISHED")
            return run.info.run_id

    # -- logging ---------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log numbers (NaN/None are skipped)."""
        if not self.enabled:
            return
        import math

        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if clean:
            mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_artifact(str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_artifacts(str(folder), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.enabled:
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in tags.items()})


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text[:6000]


def _mlflow_param(key: str, value: Any):
    from mlflow.entities import Param

    return Param(key, _param_value(value))


def _requirements() -> list[str]:
    reqs = []
    for pkg in MODEL_REQUIREMENTS:
        try:
            version = metadata.version(pkg).split("+")[0]
            reqs.append(f"{pkg}=={version}")
        except metadata.PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def image_signature(image_shape_hwc: tuple[int, int, int], output_shape: tuple[int, ...]) -> Any:
    """Signature of a model taking float32 images (N, H, W, C) and returning float32 (N, *output_shape)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *image_shape_hwc))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *output_shape))]),
    )


def latent_signature(latent_dim: int, image_shape_hwc: tuple[int, int, int]) -> Any:
    """Signature of a generator: latent (N, latent_dim) in, images (N, H, W, C) out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, latent_dim))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *image_shape_hwc))]),
    )


def register_model(
    name: str,
    kind: str,
    weights: Path,
    tags: dict[str, Any],
    signature: Any,
    run_id: str | None,
    fallback_run_id: str | None,
) -> str:
    """Register ``weights`` as a version of ``name``; returns the version.

    The model (a pyfunc "model from code" with the weights as artifact and the e2essl package as
    code, no pickle) is logged into ``run_id``, the run that trained it, when that run is in the
    store, else into ``fallback_run_id``. A version holding the same weights (SHA-256) is returned
    as it is: nothing is ever registered twice.
    """
    import tempfile

    import mlflow
    from mlflow.tracking import MlflowClient

    quiet_mlflow()
    client = MlflowClient()
    digest = file_sha256(weights)
    existing = find_version(name, FINGERPRINT_TAG, digest)
    if existing is not None:
        return existing
    target = run_id if run_id and _run_exists(run_id) else fallback_run_id
    artifact_path = f"model-{digest[:12]}"
    import e2essl

    package = Path(e2essl.__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            str(local),
            python_model=str(package / "pyfunc_entry.py"),
            artifacts={"weights": str(weights)},
            code_paths=[str(package)],
            model_config={"kind": kind},
            pip_requirements=_requirements(),
            signature=signature,
        )
        client.log_artifacts(target, str(local), artifact_path)
    all_tags = {k: str(v) for k, v in tags.items() if v is not None} | {FINGERPRINT_TAG: digest, "kind": kind, "run_id": str(target)}
    version = str(mlflow.register_model(f"runs:/{target}/{artifact_path}", name, tags=all_tags).version)
    client.set_registered_model_tag(name, "kind", kind)
    log.info("MLflow: registered %s version %s (run %s)", name, version, target)
    return version


def _run_exists(run_id: str) -> bool:
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().get_run(run_id)
        return True
    except Exception:
        return False


def set_alias(name: str, alias: str, version: str) -> None:
    """Point ``name@alias`` at ``version``."""
    from mlflow.tracking import MlflowClient

    MlflowClient().set_registered_model_alias(name, alias, version)


def find_version(name: str, tag: str, value: str) -> str | None:
    """The version of registered model ``name`` whose tag ``tag`` equals ``value``, if any."""
    from mlflow.tracking import MlflowClient

    try:
        versions = MlflowClient().search_model_versions(f"name = '{name}'")
    except Exception:
        return None
    for mv in versions:
        if mv.tags.get(tag) == value:
            return str(mv.version)
    return None


def set_champion(name: str, metric_tag: str = "val_auc", where: dict[str, str] | None = None) -> str | None:
    """Point the ``champion`` alias of ``name`` at the version with the highest ``metric_tag``.

    ``where`` restricts the candidates to versions carrying those tag values. Ties go to the
    newest version. Returns the champion's version.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    best, best_key = None, None
    for mv in client.search_model_versions(f"name = '{name}'"):
        if where and any(mv.tags.get(k) != v for k, v in where.items()):
            continue
        try:
            score = float(mv.tags[metric_tag])
        except (KeyError, ValueError):
            continue
        key = (score, int(mv.version))
        if best_key is None or key > best_key:
            best, best_key = str(mv.version), key
    if best is not None:
        client.set_registered_model_alias(name, CHAMPION, best)
        log.info("MLflow: %s@%s -> version %s (%s %.4f)", name, CHAMPION, best, metric_tag, best_key[0])
    return best


def download_model(uri: str, root: Path | None = None) -> Path:
    """Local folder of a registered model (``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``)."""
    quiet_mlflow()
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(root))
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as err:
        raise TrackingError(f"{uri}: cannot fetch this model from {tracking_uri(root)} ({type(err).__name__}: {err})") from None


def model_weights(uri: str, root: Path | None = None) -> Path:
    """The safetensors weights file inside a registered model."""
    folder = download_model(uri, root)
    found = sorted(folder.glob("artifacts/*.safetensors"))
    if not found:
        raise TrackingError(f"{uri}: holds no safetensors weights (not an e2essl model?)")
    return found[0]
