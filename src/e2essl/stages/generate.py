"""Stage ``generate``: draw the GAN-generated pretraining set and judge it against real jets.

Outputs:

* ``gan_jets.h5``: ``generate.n_jets`` jets from ``base.seed`` in the inputs' HDF5 layout, without
  labels, written atomically; a DVC output, so every generated set is versioned in dvc.lock and
  comes back with ``dvc checkout``. The same seed gives the same file.
* ``quality.json`` (DVC metrics): FPD, KPD, classifier two-sample AUCs, per-observable Wasserstein
  distances; ``observables.png`` (real vs generated histograms), ``mean_images.png``, ``grid.png``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from e2essl.checkpoint import load_weights
from e2essl.config import Params
from e2essl.data.sparse import hash_seed
from e2essl.data.writers import H5JetWriter, write_json
from e2essl.errors import TrainingError
from e2essl.models.gan import Generator
from e2essl.stages.common import StageEnv, require_single_process
from e2essl.stages.train_gan import load_pool
from e2essl.training.gan import sample

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", default="outputs/train_gan/generator.safetensors", help="generator weights (default: %(default)s)")
    parser.add_argument("--real", help="real jets to compare with (default: data.unlabelled)")
    parser.add_argument("--out", default="outputs/generate", help="output folder (default: %(default)s)")


def observable_labels(channel_names: list[str]) -> dict[str, str]:
    labels = {}
    for i, name in enumerate(channel_names):
        labels[f"energy_ch{i}"] = f"{name} energy [GeV]"
        labels[f"pixels_ch{i}"] = f"{name} non-zero pixels"
    labels["width"] = "width (energy-weighted mean R)"
    labels["mass"] = "image mass [GeV]"
    return labels


def run(args: argparse.Namespace, params: Params) -> None:
    require_single_process("generate")
    from e2essl import plots
    from e2essl.observables import jet_observables
    from e2essl.quality import compare

    env = StageEnv.create(params)
    cfg = params.generate
    out = Path(args.out)
    state, meta = load_weights(args.generator)
    if meta.get("kind") != "generator":
        raise TrainingError(f"{args.generator}: holds a {meta.get('kind', 'unknown')!r} model, expected a generator")
    generator = Generator.from_config(meta["model"]).to(env.device)
    generator.load_state_dict(state)
    gcfg = generator.config
    size = gcfg.image_size
    seed = hash_seed(params.base.seed, 0x6E4)

    with env.run("generate", ["generate"]) as run:
        attrs = {
            "producer": "e2essl generate",
            "generator": str(args.generator),
            "seed": params.base.seed,
            "label_convention": "unlabelled",
        }
        with H5JetWriter(
            out / "gan_jets.h5",
            cfg.n_jets,
            (size, size, gcfg.channels),
            image_key=params.data.image_key,
            label_key=None,
            columns=(),
            attrs=attrs,
        ) as writer:
            gen = torch.Generator(device=env.device).manual_seed(seed)
            for lo in range(0, cfg.n_jets, cfg.batch_size):
                z = torch.randn(min(cfg.batch_size, cfg.n_jets - lo), gcfg.latent_dim, generator=gen, device=env.device)
                writer.write(generator.energies(z, gen).cpu().permute(0, 2, 3, 1).numpy())
        log.info("generate: wrote %d jets to %s", cfg.n_jets, out / "gan_jets.h5")

        n = min(cfg.n_compare, cfg.n_jets)
        real = load_pool(params, Path(args.real or params.data.unlabelled), n, env.progress)
        real_images = real.dense().numpy()
        fake_images = sample(generator, len(real_images), hash_seed(seed, 1), cfg.batch_size, env.device).numpy()
        quality = compare(real_images, fake_images, cfg.c2st_epochs, seed=params.base.seed)
        quality["n_compared"] = len(real_images)
        quality["zero_pixel_fraction_real"] = float((real_images == 0).mean())
        quality["zero_pixel_fraction_generated"] = float((fake_images == 0).mean())
        write_json(out / "quality.json", quality)
        names = params.data.channel_names
        plots.observable_overlays(
            jet_observables(real_images), jet_observables(fake_images), out / "observables.png", observable_labels(names)
        )
        plots.mean_images({"real": real_images.mean(0), "generated": fake_images.mean(0)}, names, out / "mean_images.png")
        plots.image_grid(real_images[:4], fake_images[:4], out / "grid.png")
        scalars = {k: v for k, v in quality.items() if isinstance(v, (int, float))}
        run.log_metrics(scalars)
        run.log_metrics({f"w1_relative/{k}": v for k, v in quality["w1_relative"].items()})
        for name in ("quality.json", "observables.png", "mean_images.png", "grid.png"):
            run.log_artifact(out / name)
    log.info(
        "generate: FPD %.3f  KPD %.4f  C2ST AUC (images) %.3f  C2ST AUC (observables) %.3f",
        quality["fpd"],
        quality["kpd"],
        quality["c2st_auc"],
        quality["c2st_observables_auc"],
    )
