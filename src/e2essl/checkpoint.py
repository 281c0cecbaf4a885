"""Weights and training checkpoints, saved atomically and loaded without unpickling objects.

* **Weights** (what a stage hands on: the encoder, a trained classifier, the generator) are
  safetensors files. Their metadata carries a JSON description (``kind``, the model config, ...),
  so a weights file says how to rebuild its model.
* **Checkpoints** (what a stage needs to resume) hold tensors, numbers, strings, lists and dicts
  only: model/optimizer/scheduler state, epoch, best-so-far, history, RNG states and a fingerprint
  of the settings that produced them. They are written with ``torch.save`` and read with
  ``torch.load(weights_only=True)``, behind a SHA-256 check, so a truncated or altered file is
  named and refused instead of loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e2essl.data.writers import atomic_path
from e2essl.errors import TrainingError

log = logging.getLogger(__name__)


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write a safetensors file with ``meta`` (JSON-serialisable) in its header."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"e2essl": json.dumps(meta, sort_keys=True)})
    return Path(path)


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_weights`: (state dict, meta)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise TrainingError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("e2essl", "{}"))
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as err:
        raise TrainingError(f"{path}: not a readable safetensors weights file ({err})") from None
    return tensors, meta


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-serialisable settings (and input file hashes): what a checkpoint belongs to."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states, in checkpoint-safe types."""
    np_state = np.random.get_state()
    return {
        "python": json.dumps(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy().astype(np.uint32), state["numpy"]["pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically, with a ``.sha256`` file beside it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        digest = file_sha256(tmp)
    with atomic_path(path.with_name(path.name + ".sha256")) as tmp:
        tmp.write_text(digest + "\n")


def load_checkpoint(path: str | Path, expected_fingerprint: str | None = None) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none to resume.

    A checkpoint whose bytes do not match its ``.sha256``, that cannot be read, or that was made
    with other settings (``fingerprint``) is not loaded: it is renamed to ``*.corrupt`` or
    ``*.stale`` (never deleted) and the reason is logged, naming the file.
    """
    path = Path(path)
    if not path.exists():
        return None
    digest_file = path.with_name(path.name + ".sha256")
    expected = digest_file.read_text().strip() if digest_file.exists() else None

    def set_aside(suffix: str, why: str) -> None:
        aside = path.with_name(path.name + suffix)
        path.replace(aside)
        digest_file.unlink(missing_ok=True)
        log.warning("checkpoint %s %s; moved to %s and starting afresh", path, why, aside)

    if expected is None or file_sha256(path) != expected:
        set_aside(".corrupt", "is corrupt or truncated (SHA-256 does not match)")
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        set_aside(".corrupt", f"cannot be read ({type(err).__name__})")
        return None
    if expected_fingerprint is not None and state.get("fingerprint") != expected_fingerprint:
        set_aside(".stale", "was made with other settings or inputs")
        return None
    return state


def remove_checkpoint(path: str | Path) -> None:
    """Delete a finished run's checkpoint (and its digest)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".sha256").unlink(missing_ok=True)
