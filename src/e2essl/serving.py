"""Inference from a self-describing weights file: classifier, encoder or generator.

The same code serves ``e2essl predict`` and the registered MLflow models (pyfunc_entry.py). Inputs
are raw images in the file layout users have, (N, H, W, C) float32 GeV (channels-first (N, C, H, W)
is accepted too); the preprocessing travels inside the weights file's metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from e2essl.checkpoint import load_weights
from e2essl.data.preprocess import Normaliser
from e2essl.data.sparse import SparseBatch
from e2essl.errors import E2EError


class Predictor:
    """Rebuilds the model a weights file describes and applies it to numpy arrays."""

    def __init__(self, state: dict[str, torch.Tensor], meta: dict[str, Any], source: str = "weights") -> None:
        self.meta, self.kind, self.source = meta, meta.get("kind"), source
        if self.kind in ("classifier", "encoder"):
            from e2essl.models import ResNet15

            self.model = ResNet15.from_config(meta["model"])
            strict = self.kind == "classifier"
            self.model.load_state_dict(state, strict=strict)
            self.normaliser = Normaliser.from_dict(meta["normaliser"])
            self.channels = self.model.config.in_channels
            self.image_size = int(meta["image_size"])
        elif self.kind == "generator":
            from e2essl.models.gan import Generator

            self.model = Generator.from_config(meta["model"])
            self.model.load_state_dict(state)
            self.channels = self.model.config.channels
            self.image_size = self.model.config.image_size
        else:
            raise E2EError(f"{source}: unknown model kind {self.kind!r} (not an e2essl weights file?)")
        self.model.eval()

    @classmethod
    def from_file(cls, path: str | Path) -> Predictor:
        state, meta = load_weights(path)
        return cls(state, meta, str(path))

    def _images(self, x: Any) -> np.ndarray:
        """Validate a batch of images and return it channels-first (N, C, H, W) float32."""
        arr = np.asarray(x, dtype=np.float32)
        c, s = self.channels, self.image_size
        if arr.ndim == 3:
            arr = arr[None]
        if arr.shape[1:] == (s, s, c):
            arr = arr.transpose(0, 3, 1, 2)
        elif arr.shape[1:] != (c, s, s):
            raise E2EError(f"{self.source}: expected images of shape (N, {s}, {s}, {c}) (or (N, {c}, {s}, {s})), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise E2EError(f"{self.source}: input images hold NaN or inf pixels")
        if (arr < 0).any():
            raise E2EError(f"{self.source}: input images hold negative pixel energies")
        return np.ascontiguousarray(arr)

    @torch.no_grad()
    def predict_channels_first(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Quark probabilities (classifier) or 32-d features (encoder) of (N, C, H, W) images."""
        out = []
        for lo in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[lo : lo + batch_size], dtype=np.float32))
            x = self.normaliser(SparseBatch.from_dense(x))
            y = torch.sigmoid(self.model(x)) if self.kind == "classifier" else self.model.features(x)
            out.append(y.numpy())
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    @torch.no_grad()
    def __call__(self, model_input: Any) -> np.ndarray:
        """Classifier: (N,) quark probabilities. Encoder: (N, 32) features. Generator: latent
        vectors (N, latent_dim) in, raw images (N, H, W, C) out."""
        if self.kind == "generator":
            z = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
            if z.ndim != 2 or z.shape[1] != self.model.config.latent_dim:
                raise E2EError(f"{self.source}: expected latent vectors of shape (N, {self.model.config.latent_dim}), got {tuple(z.shape)}")
            # The per-pixel noise comes from a fixed seed: the same latent vectors give the same jets.
            return self.model.energies(z, torch.Generator().manual_seed(0)).permute(0, 2, 3, 1).numpy()
        return self.predict_channels_first(self._images(model_input))


def load_predictor(spec: str) -> Predictor:
    """A predictor from ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/...``, an MLflow
    model folder, or a local .safetensors file."""
    if spec.startswith(("models:/", "runs:/")):
        from e2essl.tracking import model_weights

        return Predictor.from_file(model_weights(spec))
    path = Path(spec)
    if path.is_dir():
        found = sorted(path.glob("artifacts/*.safetensors")) or sorted(path.glob("*.safetensors"))
        if not found:
            raise E2EError(f"{path}: holds no .safetensors weights")
        path = found[0]
    if not path.exists():
        raise E2EError(f"{path}: model not found (give models:/NAME/VERSION, models:/NAME@ALIAS or a .safetensors file)")
    return Predictor.from_file(path)
