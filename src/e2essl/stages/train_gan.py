"""Stage ``train_gan``: learn a generator of jet images from the unlabelled pool.

Input: ``data.unlabelled`` (up to ``train_gan.max_jets`` jets; labels, if any, are ignored).
Outputs: ``generator.safetensors`` (weights + config + energy scale, self-describing),
``history.json`` (per-epoch losses and critic scores, the MLflow run id). MLflow: losses every 10
steps, a grid of real and generated jets per ``grid_every`` epochs; the ``register`` stage
registers the generator as ``e2essl-gan``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from e2essl.checkpoint import file_sha256, fingerprint, load_checkpoint, remove_checkpoint, save_weights
from e2essl.config import Params
from e2essl.data.files import open_jet_file
from e2essl.data.preprocess import ChannelStats
from e2essl.data.sparse import SparseJets, hash_seed
from e2essl.data.writers import write_json
from e2essl.models.gan import Discriminator, GanConfig, Generator
from e2essl.stages.common import StageEnv, layout_from, require_single_process
from e2essl.training.gan import GanEpoch, GanPlan, sample, train_gan

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", help="unlabelled pool (default: data.unlabelled)")
    parser.add_argument("--out", default="outputs/train_gan", help="output folder (default: %(default)s)")
    parser.add_argument("--checkpoints", default="checkpoints", help="folder for resumable checkpoints (default: %(default)s)")


def load_pool(params: Params, path: Path, max_jets: int, progress: bool) -> SparseJets:
    """The first ``max_jets`` jets of an unlabelled (or labelled) file, sparse, without labels."""
    layout = layout_from(params, label_key=False)
    with open_jet_file(path, layout) as jets:
        n = min(max_jets, jets.n_jets)
        pool = SparseJets.from_file(jets, np.arange(n), chunk=params.data.read_chunk, progress=progress)
    pool.labels = None
    return pool


def energy_scale(pool: SparseJets) -> tuple[float, ...]:
    """Mean non-zero pixel energy per channel: the s_c of the GAN's log transform."""
    c, h, w = pool.image_shape
    stats = ChannelStats(channels=c, pixels_per_channel=h * w)
    stats.update(pool.values.numpy(), pool.pixel.numpy(), len(pool))
    return tuple(stats.mean_nonzero)


def run(args: argparse.Namespace, params: Params) -> None:
    require_single_process("train_gan")
    env = StageEnv.create(params)
    cfg = params.train_gan
    source = Path(args.input or params.data.unlabelled)
    out = Path(args.out)
    pool = load_pool(params, source, cfg.max_jets, env.progress)
    if len(pool) < cfg.batch_size:
        from e2essl.errors import DataError

        raise DataError(source, f"holds {len(pool)} jets, fewer than train_gan.batch_size ({cfg.batch_size})")
    names = params.data.channel_names
    gan_cfg = GanConfig(
        channels=params.data.channels,
        image_size=params.data.image_size,
        latent_dim=cfg.latent_dim,
        base_channels=cfg.base_channels,
        hcal_channel=names.index("HCAL") if "HCAL" in names else None,
        scale=energy_scale(pool),
    )
    seed = hash_seed(params.base.seed, 0x6A4)
    torch.manual_seed(seed)
    generator = Generator(gan_cfg).to(env.device).to(memory_format=torch.channels_last)
    discriminator = Discriminator(gan_cfg).to(env.device).to(memory_format=torch.channels_last)
    plan = GanPlan(cfg.epochs, cfg.batch_size, cfg.lr_generator, cfg.lr_discriminator, (cfg.beta1, cfg.beta2), cfg.n_critic, seed)
    dump = params.model_dump(mode="json")
    fp = fingerprint("train_gan", {k: dump[k] for k in ("base", "data", "train_gan")}, file_sha256(source))
    ckpt_path = Path(args.checkpoints) / "train_gan" / "gan.pt"
    resume = load_checkpoint(ckpt_path, fp)
    preview_real = pool.dense(torch.arange(min(4, len(pool)))).numpy()

    with env.run("train_gan", ["train_gan"], resume_run_id=resume.get("mlflow_run_id") if resume else None) as run:
        run.set_tags({"pool_jets": len(pool), "source": str(source)})

        def on_step(step: int, values: dict[str, float]) -> None:
            if step % 10 == 0:
                run.log_metrics(values, step=step)

        def on_epoch(record: GanEpoch) -> None:
            run.log_metrics({f"epoch_{k}": v for k, v in record.__dict__.items() if k != "epoch"}, step=record.epoch)
            if record.epoch % cfg.grid_every == 0 or record.epoch == cfg.epochs:
                from e2essl.plots import image_grid

                fake = sample(generator, 4, 12345, 4, env.device).numpy()
                generator.train()
                with tempfile.TemporaryDirectory() as tmp:
                    grid = image_grid(
                        preview_real, fake, Path(tmp) / f"grid_epoch{record.epoch:03d}.png", title=f"GAN epoch {record.epoch}"
                    )
                    run.log_artifact(grid, "grids")

        history = train_gan(
            generator,
            discriminator,
            pool,
            plan,
            env.device,
            str(ckpt_path),
            fp,
            resume=resume,
            on_step=on_step,
            on_epoch=on_epoch,
            progress=env.progress,
            extra_state={"mlflow_run_id": str(run.run_id)},
        )
        meta = {"kind": "generator", "model": gan_cfg.to_dict(), "pool_jets": len(pool), "epochs": cfg.epochs}
        weights = save_weights(out / "generator.safetensors", generator.state_dict(), meta)
        write_json(out / "history.json", {"mlflow_run_id": run.run_id, "epochs": [h.__dict__ for h in history]})
        run.log_artifact(out / "history.json")
    remove_checkpoint(ckpt_path)
    log.info("train_gan: %d epochs on %d jets -> %s", cfg.epochs, len(pool), weights)
