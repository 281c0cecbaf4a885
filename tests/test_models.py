"""ResNet-15 as published, and weights that travel without pickle."""

from __future__ import annotations

import pytest
import torch

from e2essl.checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
from e2essl.models import ResNet15, count_parameters, make_projector
from e2essl.models.resnet15 import ResidualBlock


def test_resnet15_shapes_and_parameter_count():
    model = ResNet15()
    assert count_parameters(model) == 86_241
    x = torch.randn(4, 3, 125, 125)
    assert model.features(x).shape == (4, 32)
    assert model(x).shape == (4,)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert len(convs) == 15
    # Only the 16 -> 32 block has a (1x1) shortcut convolution.
    shortcuts = [m.shortcut for m in model.modules() if isinstance(m, ResidualBlock)]
    assert sum(isinstance(s, torch.nn.Conv2d) for s in shortcuts) == 1


def test_any_channel_count_and_image_size_and_optional_batchnorm():
    model = ResNet15(in_channels=8, batchnorm=True)
    assert model(torch.randn(2, 8, 40, 40)).shape == (2,)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ResNet15().modules())


def test_encoder_state_excludes_the_head():
    model = ResNet15()
    keys = model.encoder_state_dict().keys()
    assert keys and not any(k.startswith("head.") for k in keys)
    assert set(model.state_dict()) - set(keys) == {"head.weight", "head.bias"}


def test_a_tiny_batch_is_overfitted():
    torch.manual_seed(0)
    model = ResNet15()
    x = torch.rand(8, 3, 40, 40)
    y = torch.tensor([0.0, 1.0] * 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    assert ((model(x) > 0).float() == y).all()


def test_projector_layout():
    proj = make_projector(32, [64, 64, 16])
    assert proj(torch.randn(5, 32)).shape == (5, 16)
    kinds = [type(m).__name__ for m in proj]
    assert kinds == ["Linear", "GlobalBatchNorm1d", "ReLU", "Linear", "GlobalBatchNorm1d", "ReLU", "Linear"]


def test_weights_are_self_describing_safetensors(tmp_path):
    model = ResNet15()
    meta = {"kind": "classifier", "model": model.config.to_dict(), "val_auc": 0.7}
    path = save_weights(tmp_path / "m.safetensors", model.state_dict(), meta)
    assert path.read_bytes()[8:9] == b"{"  # safetensors: a JSON header, no pickle opcodes
    state, read_meta = load_weights(path)
    assert read_meta == meta
    rebuilt = ResNet15.from_config(read_meta["model"])
    rebuilt.load_state_dict(state)
    x = torch.randn(2, 3, 125, 125)
    assert torch.equal(rebuilt(x), model(x))


def test_checkpoint_round_trip_and_corruption_is_detected(tmp_path, caplog):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"fingerprint": "abc", "epoch": 3, "w": torch.arange(5), "history": [{"a": 1.0}]})
    state = load_checkpoint(path, "abc")
    assert state["epoch"] == 3 and torch.equal(state["w"], torch.arange(5))
    # Made with other settings: set aside as .stale, not loaded.
    assert load_checkpoint(path, "other") is None
    assert (tmp_path / "c.pt.stale").exists() and not path.exists()
    # Truncated: detected by its digest, named in the log, set aside as .corrupt.
    save_checkpoint(path, {"fingerprint": "abc", "epoch": 1})
    path.write_bytes(path.read_bytes()[:-20])
    with caplog.at_level("WARNING"):
        assert load_checkpoint(path, "abc") is None
    assert str(path) in caplog.text and "corrupt" in caplog.text
    assert (tmp_path / "c.pt.corrupt").exists()


def test_checkpoints_refuse_pickled_objects(tmp_path):
    """A checkpoint holding an arbitrary object is not unpickled (weights_only loading)."""
    import hashlib

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"fingerprint": "x", "payload": Evil()}, path)
    (tmp_path / "evil.pt.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    assert load_checkpoint(path, "x") is None
    assert (tmp_path / "evil.pt.corrupt").exists()


@pytest.mark.parametrize("bad", [b"", b"not safetensors at all"])
def test_unreadable_weights_are_named(tmp_path, bad):
    from e2essl.errors import TrainingError

    path = tmp_path / "w.safetensors"
    path.write_bytes(bad)
    with pytest.raises(TrainingError, match="not a readable safetensors weights file"):
        load_weights(path)
