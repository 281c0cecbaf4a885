"""The ``e2essl`` command: one subcommand per DVC stage plus simulate, inspect, predict and bench.

Every subcommand reads params.yaml (``--params``) once, validates it, and turns any user-fixable
problem into one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable

from e2essl.errors import E2EError

# name -> (module, help). Stage names are the same words as in dvc.yaml, params.yaml and MLflow.
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("e2essl.commands:simulate", "write the built-in simulated labelled file and unlabelled pool"),
    "inspect": ("e2essl.commands:inspect", "validate a jet file and summarise it"),
    "prepare": ("e2essl.stages.prepare", "stage: split the labelled set, store the splits, compute statistics"),
    "train_gan": ("e2essl.stages.train_gan", "stage: train the GAN on the unlabelled pool"),
    "generate": ("e2essl.stages.generate", "stage: draw the GAN-generated set and judge it"),
    "pretrain": ("e2essl.stages.pretrain", "stage: self-supervised pretraining of the ResNet-15 encoder"),
    "scratch": ("e2essl.stages.supervised:scratch", "stage: train ResNet-15 from random initialisation"),
    "finetune": ("e2essl.stages.supervised:finetune", "stage: finetune the pretrained encoder"),
    "linear_probe": ("e2essl.stages.supervised:linear_probe", "stage: train a head on the frozen pretrained encoder"),
    "evaluate": ("e2essl.stages.evaluate", "stage: score every trained model on the test split"),
    "report": ("e2essl.stages.report", "stage: tables and plots comparing the arms"),
    "register": ("e2essl.stages.register", "stage: put every model into the MLflow registry and set the champion aliases"),
    "predict": ("e2essl.commands:predict", "quark probabilities of a file's jets from a registered or local model"),
    "bench": ("e2essl.bench", "benchmarks (make bench): speeds and ratios, written to benchmarks/results.md"),
}


def _load(spec: str) -> tuple[Callable, Callable]:
    """(add_arguments, run) of a command spec 'module' or 'module:prefix'."""
    module_name, _, prefix = spec.partition(":")
    module = importlib.import_module(module_name)
    if prefix:
        return getattr(module, f"add_{prefix}_arguments"), getattr(module, f"run_{prefix}")
    return module.add_arguments, module.run


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="e2essl", description="Self-supervised pretraining for CMS end-to-end jet images.")
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers = {}
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default=argparse.SUPPRESS, help="params file (default: params.yaml)")
        subparsers[name] = p
    return parser, subparsers


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "h5py", "git", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    argv = sys.argv[1:] if argv is None else argv
    parser, subparsers = build_parser()
    # Only the chosen subcommand's module is imported (torch and mlflow are slow to import).
    chosen = next((a for a in argv if a in COMMANDS), None)
    if chosen:
        add_arguments, _ = _load(COMMANDS[chosen][0])
        add_arguments(subparsers[chosen])
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        from e2essl.config import Params, load_params

        # Outside a project (no params.yaml here and none named), the defaults apply.
        explicit = any(a == "--params" or a.startswith("--params=") for a in argv)
        params = load_params(args.params) if explicit or os.path.exists(args.params) else Params()
        _, run = _load(COMMANDS[args.command][0])
        run(args, params)
    except E2EError as err:
        print(f"e2essl {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"e2essl {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
