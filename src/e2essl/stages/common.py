"""Helpers the stage entry points share: layouts, prepared splits, devices, tracking runs."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from e2essl.config import Params
from e2essl.data.files import Layout
from e2essl.data.preprocess import Normaliser
from e2essl.data.sparse import SparseJets
from e2essl.data.store import SparseStore
from e2essl.distributed import Dist, init_distributed
from e2essl.errors import DataError
from e2essl.tracking import StageRun
from e2essl.training.common import pick_device, seed_everything, set_threads

log = logging.getLogger(__name__)


def progress_enabled() -> bool:
    """Progress bars on a terminal (or when ``E2ESSL_PROGRESS=1``), quiet in logs and CI."""
    env = os.environ.get("E2ESSL_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "")
    return sys.stderr.isatty()


def require_single_process(stage: str) -> None:
    """Stages without a distributed mode refuse to run under torchrun instead of repeating their work."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from e2essl.errors import E2EError

        raise E2EError(f"{stage} runs in one process; start it with `e2essl {stage}`, not under torchrun")


def layout_from(params: Params, label_key: bool = True) -> Layout:
    """The file layout params.yaml describes."""
    d = params.data
    return Layout(
        image_key=d.image_key,
        label_key=d.label_key if label_key else None,
        channels=d.channels,
        image_size=d.image_size,
        bad_pixels=d.bad_pixels,
    )


@dataclass(frozen=True)
class Prepared:
    """The prepare stage's output folder."""

    folder: Path

    @property
    def normalisation(self) -> Path:
        return self.folder / "normalisation.json"

    def split_path(self, split: str) -> Path:
        return self.folder / f"{split}.h5"

    def normaliser(self, method: str) -> Normaliser:
        import json

        try:
            stats = json.loads(self.normalisation.read_text())
        except FileNotFoundError:
            raise DataError(self.normalisation, "not found; run the prepare stage first (dvc repro prepare)") from None
        return Normaliser.from_dict(stats).with_method(method)

    def load(self, split: str, fraction: float = 1.0, memory_budget_gb: float | None = None) -> SparseJets:
        """A split (or its label-fraction subset) in memory."""
        with SparseStore(self.split_path(split)) as store:
            need = store.nbytes(fraction)
            if memory_budget_gb is not None and need > memory_budget_gb * 2**30:
                raise DataError(
                    store.path,
                    f"the {split} split needs {need / 2**30:.1f} GiB in memory, above data.memory_budget_gb "
                    f"({memory_budget_gb}); raise the budget or use a machine with more memory",
                )
            return store.load(fraction)


@dataclass
class StageEnv:
    """What a training stage runs with: params, process group, device."""

    params: Params
    dist: Dist
    device: torch.device
    progress: bool

    @classmethod
    def create(cls, params: Params) -> StageEnv:
        """Threads, process group, device and seeds; and a check that the MLflow store answers,
        so a misconfigured store stops the stage before any data is read or trained on."""
        set_threads(params.base.threads)
        dist = init_distributed(params.base.device)
        device = pick_device(params.base.device, dist.local_rank)
        seed_everything(params.base.seed)
        if dist.is_main:
            from e2essl.tracking import connect

            connect(params.tracking.experiment)
        return cls(params, dist, device, progress_enabled())

    def run(self, stage: str, sections: list[str], resume_run_id: str | None = None) -> StageRun:
        """The MLflow run of this stage (only rank 0 tracks)."""
        dump = self.params.model_dump(mode="json")
        logged = {name: dump[name] for name in ["base", "data", *sections]}
        return StageRun(
            stage,
            logged,
            pipeline_params=dump,
            experiment=self.params.tracking.experiment,
            enabled=self.dist.is_main,
            resume_run_id=resume_run_id,
        )
