"""params.yaml as typed, validated settings: one section per stage plus ``base``.

Unknown keys, wrong types and out-of-range values are errors. :func:`load_params` turns the first
problem into one line naming the file and the key, e.g.::

    params.yaml: pretrain.lr: Input should be greater than 0 (got -0.1)

Stage code reads its section from the returned :class:`Params`; nothing else parses params.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from e2essl.errors import ConfigError

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    """A params.yaml section: unknown keys are rejected, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class Base(Section):
    """Settings every stage shares."""

    seed: NonNegativeInt = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Torch intra-op threads; 0 lets torch decide (all cores).
    threads: NonNegativeInt = 0
    # bf16 autocast on CUDA (losses stay float32); ignored on CPU.
    mixed_precision: bool = True
    # How dvc.yaml starts the stages that can run distributed (pretrain, scratch, finetune,
    # linear_probe): "e2essl", or e.g. "torchrun --standalone --nproc_per_node=4 -m e2essl.cli".
    launcher: str = "e2essl"


class Data(Section):
    """Where the jets are and how their files are laid out (REFERENCE.md)."""

    labelled: str = "data/quark_gluon_simulated.h5"
    unlabelled: str = "data/unlabelled_simulated.h5"
    image_key: str = "X_jets"
    label_key: str = "y"
    channels: PositiveInt = 3
    image_size: PositiveInt = 125
    channel_names: list[str] = ["Tracks", "ECAL", "HCAL"]
    # What to do with NaN/inf or negative pixels: stop with an error, or set them to zero.
    bad_pixels: Literal["error", "zero"] = "error"
    # Above this size (GiB) the sparse in-memory copy is not built and files are streamed.
    memory_budget_gb: PositiveFloat = 8.0
    # Jets per read; files are never read one jet at a time.
    read_chunk: PositiveInt = 512
    # Preprocessing applied to raw GeV after augmentation:
    #   e2e: zero-suppress < 1e-3 GeV, HCAL x 25, / 100 (the original E2E recipe)
    #   log: log1p(E / s_c), s_c the per-channel mean non-zero pixel energy on the training split
    #   standardise: (E - mean_c) / std_c with training-split statistics
    preprocess: Literal["e2e", "log", "standardise"] = "log"

    @model_validator(mode="after")
    def _names_match_channels(self) -> Data:
        if len(self.channel_names) != self.channels:
            raise ValueError(f"channel_names has {len(self.channel_names)} entries but channels is {self.channels}")
        return self


class Simulate(Section):
    """The built-in jet simulator (``e2essl simulate``); see data/simulate.py for the physics."""

    n_labelled: PositiveInt = 6000
    n_unlabelled: PositiveInt = 6000
    seed_labelled: NonNegativeInt = 1
    seed_unlabelled: NonNegativeInt = 2
    # The pool's quark fraction is drawn from this range with its seed and not stored.
    unlabelled_quark_fraction: tuple[Probability, Probability] = (0.3, 0.7)
    pt_min: PositiveFloat = 70.0
    pt_max: PositiveFloat = 200.0
    pt_power: PositiveFloat = 4.0
    jet_radius: PositiveFloat = 0.4
    alpha_s_mz: PositiveFloat = 0.118
    kt_min: PositiveFloat = 1.0
    kt_freeze: PositiveFloat = 1.5
    hadrons_per_log_energy: PositiveFloat = 2.0
    gluon_hadron_ratio: PositiveFloat = 1.2
    quark_fragmentation_concentration: PositiveFloat = 0.6
    gluon_fragmentation_concentration: PositiveFloat = 0.9
    kt_hadron: PositiveFloat = 0.35
    charged_fraction: Probability = 0.6
    pi0_fraction: Probability = 0.3
    pileup_mean: NonNegativeFloat = 30.0
    pileup_pt_mean: PositiveFloat = 0.6
    pileup_track_fraction: Probability = 0.3
    track_efficiency: Probability = 0.9
    track_pt_min: NonNegativeFloat = 0.5
    track_resolution: NonNegativeFloat = 0.01
    b_field: NonNegativeFloat = 3.8
    mip_energy: PositiveFloat = 0.3
    ecal_stochastic: NonNegativeFloat = 0.05
    ecal_constant: NonNegativeFloat = 0.005
    ecal_noise: NonNegativeFloat = 0.05
    ecal_threshold: PositiveFloat = 0.15
    hcal_stochastic: NonNegativeFloat = 1.0
    hcal_constant: NonNegativeFloat = 0.05
    hcal_noise: NonNegativeFloat = 0.3
    hcal_threshold: PositiveFloat = 0.8

    @model_validator(mode="after")
    def _consistent(self) -> Simulate:
        if self.pt_min >= self.pt_max:
            raise ValueError(f"pt_min ({self.pt_min}) must be below pt_max ({self.pt_max})")
        if self.charged_fraction + self.pi0_fraction > 1:
            raise ValueError("charged_fraction + pi0_fraction must be at most 1")
        lo, hi = self.unlabelled_quark_fraction
        if lo > hi:
            raise ValueError("unlabelled_quark_fraction must be (low, high) with low <= high")
        return self


class Prepare(Section):
    """Splits of the labelled set and normalisation statistics."""

    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    # Fraction of the non-test part held out for validation (model selection).
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.125


class Study(Section):
    """The label-fraction x seed matrix every supervised arm runs over."""

    fractions: list[Annotated[float, Field(gt=0, le=1)]] = [0.01, 0.1, 1.0]
    seeds: list[NonNegativeInt] = [0, 1]

    @field_validator("fractions", "seeds")
    @classmethod
    def _non_empty_unique(cls, v: list) -> list:
        if not v:
            raise ValueError("must not be empty")
        if len(set(v)) != len(v):
            raise ValueError("must not repeat a value")
        return v


class Augment(Section):
    """Detector-respecting augmentations (REFERENCE.md); strength 0 switches one off."""

    flip: bool = True
    rotate90: bool = True
    max_shift: NonNegativeInt = 3
    smear_stochastic: NonNegativeFloat = 0.1
    smear_constant: NonNegativeFloat = 0.0
    scale_jitter: NonNegativeFloat = 0.05
    # Per-jet global energy scale exp(U(-s, s)) for all channels at once: invariance to the jet's pT.
    energy_scale: NonNegativeFloat = 0.0
    soft_dropout: Probability = 0.0
    soft_threshold: NonNegativeFloat = 1.0
    split_prob: Probability = 0.0


class TrainGan(Section):
    """The GAN that makes the unlabelled pretraining set."""

    epochs: PositiveInt = 2
    batch_size: PositiveInt = 64
    latent_dim: PositiveInt = 64
    base_channels: PositiveInt = 16
    lr_generator: PositiveFloat = 2e-4
    lr_discriminator: PositiveFloat = 2e-4
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.0
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.9
    # Discriminator steps per generator step.
    n_critic: PositiveInt = 1
    max_jets: PositiveInt = 6000
    grid_every: PositiveInt = 1


class Generate(Section):
    """Drawing the GAN-generated set and judging it."""

    n_jets: PositiveInt = 6000
    batch_size: PositiveInt = 256
    # Real and generated jets compared by the quality metrics.
    n_compare: PositiveInt = 1000
    c2st_epochs: PositiveInt = 2


class Pretrain(Section):
    """Self-supervised pretraining of the ResNet-15 encoder."""

    method: Literal["barlow_twins", "vicreg"] = "barlow_twins"
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 256
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 1e-5
    projector: list[PositiveInt] = [256, 256, 256]
    # Barlow Twins off-diagonal weight; null means 1 / projector width.
    offdiag_weight: PositiveFloat | None = None
    vicreg_invariance: NonNegativeFloat = 25.0
    vicreg_variance: NonNegativeFloat = 25.0
    vicreg_covariance: NonNegativeFloat = 1.0
    # Also pretrain on the real unlabelled pool (data.unlabelled), not only the GAN set.
    use_real_pool: bool = False
    # Every this many epochs: kNN ROC AUC of the encoder features on the validation split.
    monitor_every: PositiveInt = 1
    knn_k: PositiveInt = 20
    # Clip the gradient norm at this value (0: off); Adam copes with Barlow Twins' large early gradients.
    grad_clip: NonNegativeFloat = 0.0
    batchnorm: bool = False

    @field_validator("projector")
    @classmethod
    def _non_empty(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("must list at least one layer width")
        return v


class Supervised(Section):
    """The budget and rules every supervised arm shares: same epochs, batch, schedule, selection."""

    epochs: PositiveInt = 6
    batch_size: PositiveInt = 64
    # An epoch makes at least this many steps (several passes over a small label fraction), so the
    # 1 % arms train for more than a handful of steps; one validation per epoch either way.
    min_steps_per_epoch: PositiveInt = 20
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    weight_decay: NonNegativeFloat = 0.0
    # Exact-on-the-grid augmentation (flips, 90-degree rotations) for every arm.
    augment: bool = True
    grad_clip: NonNegativeFloat = 5.0
    batchnorm: bool = False


class Scratch(Section):
    """ResNet-15 from random initialisation."""

    lr: PositiveFloat = 1e-3


class Finetune(Section):
    """ResNet-15 initialised from the pretrained encoder, with a new head."""

    encoder_lr: PositiveFloat = 1e-4
    head_lr: PositiveFloat = 1e-3
    # Epochs with the encoder frozen before it is trained (part of the same epoch budget).
    frozen_epochs: NonNegativeInt = 0
    # Where the encoder comes from: "stage" (outputs/pretrain) or an MLflow URI such as
    # models:/e2essl-ssl-encoder/3.
    encoder: str = "stage"


class LinearProbe(Section):
    """Frozen pretrained encoder, trained head: measures the representation alone."""

    lr: PositiveFloat = 1e-2


class Evaluate(Section):
    """Scoring on the untouched test split."""

    bootstrap: NonNegativeInt = 200
    batch_size: PositiveInt = 256


class Report(Section):
    """The comparison report."""

    embedding_jets: PositiveInt = 1000
    embedding_method: Literal["pca", "tsne"] = "pca"


class Tracking(Section):
    """MLflow."""

    experiment: str = "e2essl"
    register_models: bool = True


class Params(Section):
    """All of params.yaml."""

    base: Base = Base()
    data: Data = Data()
    simulate: Simulate = Simulate()
    prepare: Prepare = Prepare()
    study: Study = Study()
    augment: Augment = Augment()
    train_gan: TrainGan = TrainGan()
    generate: Generate = Generate()
    pretrain: Pretrain = Pretrain()
    supervised: Supervised = Supervised()
    scratch: Scratch = Scratch()
    finetune: Finetune = Finetune()
    linear_probe: LinearProbe = LinearProbe()
    evaluate: Evaluate = Evaluate()
    report: Report = Report()
    tracking: Tracking = Tracking()

    @model_validator(mode="after")
    def _frozen_within_budget(self) -> Params:
        if self.finetune.frozen_epochs > self.supervised.epochs:
            raise ValueError(f"finetune.frozen_epochs ({self.finetune.frozen_epochs}) exceeds supervised.epochs ({self.supervised.epochs})")
        return self


# The simulator's settings are this section; the name says what the library takes.
SimulateConfig = Simulate


def _describe(error: ValidationError) -> str:
    """The first validation problem as 'key.path: message (got value)'."""
    first = error.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and not isinstance(first["input"], dict):
        msg = f"{msg} (got {first['input']!r})"
    if first["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{loc}: {msg}{suffix}" if loc else f"{msg}{suffix}"


def params_from_dict(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-parsed params mapping."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_describe(err)}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; every problem becomes one :class:`ConfigError` line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where} ({getattr(err, 'problem', err)})") from None
    return params_from_dict(raw, str(path))
