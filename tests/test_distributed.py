"""torchrun/DDP on the CPU (gloo): two processes compute what one process computes on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from e2essl.config import Augment
from e2essl.data.preprocess import Normaliser
from e2essl.data.sparse import SparseJets
from e2essl.distributed import Dist
from e2essl.models import ResNet15, make_projector
from e2essl.training.pretrain import PretrainPlan, SiameseModel, ssl_loss
from e2essl.training.supervised import supervised_loss

from .conftest import random_images

NORM = Normaliser("log", mean=[0.1] * 3, std=[1.0] * 3, scale=[1.0] * 3)
GLOBAL_BATCH = 12  # not a multiple of 2 * 4: unequal shards are part of the test


def _jets() -> SparseJets:
    return SparseJets.from_dense(
        torch.from_numpy(random_images(GLOBAL_BATCH, size=24, channels_last=False, seed=9)), np.arange(GLOBAL_BATCH) % 2
    )


def _models(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "supervised":
        return ResNet15()
    return SiameseModel(ResNet15(), make_projector(32, [16, 16]))


def _step(kind: str, net: torch.nn.Module, d: Dist) -> torch.Tensor:
    """One step's loss on this rank (backward done); the global batch is the same on every rank."""
    jets = _jets()
    batch = jets.gather(torch.arange(GLOBAL_BATCH))
    if kind == "supervised":
        loss = supervised_loss(net, batch, jets.labels, NORM, torch.device("cpu"), d)
    else:
        plan = PretrainPlan("barlow_twins", 1, GLOBAL_BATCH, 1e-3, 0.0, seed=1)
        loss = ssl_loss(net, batch, Augment(), torch.Generator().manual_seed(5), NORM, plan, torch.device("cpu"), d).loss
    loss.backward()
    return loss.detach()


def _worker(rank: int, world: int, port: int, kind: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    d = Dist(rank, world)
    model = _models(kind)
    net = torch.nn.parallel.DistributedDataParallel(model)
    loss = _step(kind, net, d)
    losses = [torch.zeros(()) for _ in range(world)]
    torch_dist.all_gather(losses, loss)
    if rank == 0:
        torch.save({"losses": torch.stack(losses), "grads": {n: p.grad for n, p in model.named_parameters()}}, out)
    torch_dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["supervised", "barlow_twins"])
def test_two_processes_give_the_single_process_loss_and_gradients(tmp_path, kind):
    reference = _models(kind)
    ref_loss = _step(kind, reference, Dist())
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(2, _free_port(), kind, out), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    if kind == "supervised":
        # Each rank's loss is its share of the global mean (times the world size).
        torch.testing.assert_close(result["losses"].sum() / 2, ref_loss, rtol=1e-5, atol=1e-6)
    else:
        # The cross-correlation is reduced across ranks: every rank holds the global loss.
        torch.testing.assert_close(result["losses"], ref_loss.expand(2), rtol=1e-5, atol=1e-5)
    for name, p in reference.named_parameters():
        if p.grad is None:  # the classifier head takes no part in pretraining
            assert result["grads"][name] is None
            continue
        # float32 sums in another order: agree to 1e-4 of each tensor's largest gradient.
        scale = float(p.grad.abs().max())
        torch.testing.assert_close(result["grads"][name], p.grad, rtol=1e-3, atol=1e-4 * scale, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.slow
def test_torchrun_pretrains_and_finetunes_with_rank_zero_writing(tmp_path, small_files):
    """`torchrun --nproc_per_node 2` runs the pretrain and finetune stages; only rank 0 writes."""
    import yaml

    from e2essl.stages.prepare import prepare

    from .conftest import small_params

    params = small_params(
        tmp_path, pretrain={"epochs": 1, "batch_size": 32, "projector": [32, 32]}, supervised={"epochs": 1, "batch_size": 32}
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    prepare(params, small_files["labelled"], tmp_path / "outputs" / "prepare")
    env = os.environ | {"E2ESSL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "e2essl.cli"]
    for args in (
        ["pretrain", "--input", str(small_files["unlabelled"]), "--out", "pt"],
        ["finetune", "--fraction", "1.0", "--seed", "0", "--encoder", "pt/encoder.safetensors", "--out", "ft"],
    ):
        done = subprocess.run([*torchrun, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in Path(tmp_path / "pt").iterdir()) == ["encoder.safetensors", "history.json"]
    assert sorted(p.name for p in Path(tmp_path / "ft").iterdir()) == ["history.json", "model.safetensors"]
    import mlflow

    runs = mlflow.search_runs(experiment_names=["e2essl"])
    assert sorted(runs["tags.e2essl.stage"].dropna()) == ["finetune", "pretrain"]  # one run per stage, from rank 0


def test_single_process_stages_refuse_torchrun(tmp_path):
    env = os.environ | {"WORLD_SIZE": "2", "RANK": "1", "E2ESSL_PROGRESS": "0"}
    done = subprocess.run([sys.executable, "-m", "e2essl", "train_gan"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert (
        done.stderr.strip().splitlines()[-1]
        == "e2essl train_gan: error: train_gan runs in one process; start it with `e2essl train_gan`, not under torchrun"
    )
