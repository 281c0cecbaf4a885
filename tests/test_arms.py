"""The three arms: the encoder loads exactly, the arms share data and budget, seeds aggregate right."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from e2essl.checkpoint import save_weights
from e2essl.errors import TrainingError
from e2essl.models import ResNet15
from e2essl.stages.evaluate import fraction_label, summarise
from e2essl.stages.prepare import prepare
from e2essl.stages.report import gains
from e2essl.stages.supervised import build_model, load_encoder, run_arm

from .conftest import small_params


def _encoder_file(tmp_path, channels=3):
    torch.manual_seed(42)
    enc = ResNet15(channels)
    meta = {"kind": "encoder", "model": enc.config.to_dict()}
    return save_weights(tmp_path / "encoder.safetensors", enc.encoder_state_dict(), meta), enc


def test_finetuning_loads_every_encoder_weight_and_only_the_head_is_new(tmp_path):
    path, enc = _encoder_file(tmp_path)
    params = small_params(tmp_path)
    model, groups, frozen = build_model("finetune", params, path, init_seed=7)
    for k, v in enc.encoder_state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    torch.manual_seed(7)
    fresh = ResNet15()
    assert torch.equal(model.head.weight, fresh.head.weight)  # the head is the seeded random one
    assert [g["lr"] for g in groups] == [params.finetune.encoder_lr, params.finetune.head_lr] and frozen == 0
    probe, probe_groups, probe_frozen = build_model("linear_probe", params, path, init_seed=7)
    assert len(probe_groups) == 1 and probe_frozen == params.supervised.epochs
    assert probe_groups[0]["params"] == list(probe.head.parameters())


def test_a_wrong_encoder_file_is_named(tmp_path):
    path, _ = _encoder_file(tmp_path, channels=8)
    with pytest.raises(TrainingError, match=r"encoder takes 8 channels, data\.channels is 3"):
        load_encoder(ResNet15(3), path)
    clf = save_weights(tmp_path / "clf.safetensors", ResNet15().state_dict(), {"kind": "classifier", "model": ResNet15().config.to_dict()})
    with pytest.raises(TrainingError, match="holds a 'classifier' model, expected a pretrained encoder"):
        load_encoder(ResNet15(3), clf)


@pytest.mark.slow
def test_scratch_and_finetune_share_data_budget_and_selection(tmp_path, small_files):
    params = small_params(tmp_path, supervised={"epochs": 2, "batch_size": 32})
    prepare(params, small_files["labelled"], tmp_path / "prepared")
    path, _ = _encoder_file(tmp_path)
    histories = {}
    for arm in ("scratch", "finetune"):
        args = argparse.Namespace(
            fraction=0.1,
            seed=3,
            prepared=str(tmp_path / "prepared"),
            out=str(tmp_path / arm),
            checkpoints=str(tmp_path / "ck"),
            encoder=str(path),
        )
        run_arm(arm, args, params)
        histories[arm] = json.loads((tmp_path / arm / "history.json").read_text())
    s, f = histories["scratch"], histories["finetune"]
    assert s["train_jets"] == f["train_jets"] == 42 and len(s["epochs"]) == len(f["epochs"]) == 2
    for h in (s, f):  # the selected epoch is the best on validation
        assert h["best_val_auc"] == max(e["val_auc"] for e in h["epochs"])
    assert s["epochs"][0]["val_auc"] != f["epochs"][0]["val_auc"]  # different initialisations, same data


def test_seed_aggregation_on_hand_made_metrics():
    m = lambda auc: {"roc_auc": auc, "accuracy": 0.5, "loss": 0.7, "rejection_at_50": 3.0}  # noqa: E731
    per_model = {
        "scratch": {"10pct": {"seed0": m(0.70), "seed1": m(0.72), "seed2": m(0.74)}},
        "finetune": {"10pct": {"seed0": m(0.76), "seed1": m(0.77), "seed2": m(0.78)}},
    }
    summary = summarise(per_model)
    assert summary["scratch"]["10pct"]["roc_auc_mean"] == pytest.approx(0.72)
    assert summary["scratch"]["10pct"]["roc_auc_std"] == pytest.approx(0.02)  # sample std over seeds
    assert summary["finetune"]["10pct"]["n_seeds"] == 3
    g = gains(summary, [0.1])["finetune"]["10pct"]
    assert g["auc_gain"] == pytest.approx(0.05) and g["seed_spread"] == pytest.approx(np.hypot(0.02, 0.01))
    assert g["significant"]
    assert fraction_label(0.01) == "1pct" and fraction_label(0.005) == "0p5pct" and fraction_label(1.0) == "100pct"
