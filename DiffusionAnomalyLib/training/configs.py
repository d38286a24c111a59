"""The training stages' settings, each option declared once on a field (torch-free, so the command line's
parsers are built without importing torch): :class:`TrainingRun` (what every stage takes) and the autoencoder,
denoiser and classifier stages' configs; ``train all``'s plan redeclares some of them
(``training/recipe/plan.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.options import Option, problems, redeclared, required, setting
from DiffusionAnomalyLib.settings import ORGANS, PRECISIONS

#: The single training stages (``diffusion-anomaly train PART``); ``all`` runs them in turn.
PARTS = ("autoencoder", "denoiser", "classifier", "synthesizer")
#: Options of every stage that ``train all`` also takes.
ALL_PARTS = (*PARTS, "all")


#: The dataset, the output bundle and the bundle a later stage extends: one declaration each (positional fields of
#: every stage's config).
DATA = Option("dataset folder (DATA/labels.csv, DATA/<case>/<channel>.nii.gz, DATA/<case>/segmentations/)", ALL_PARTS)
OUT = Option("output bundle folder (work files go to OUT.work)", ALL_PARTS)
EXTENDS = Option("the bundle of the stage before, to extend (denoiser: the autoencoder's; classifier: the "
                 "denoiser's; synthesizer: any bundle with an autoencoder, usually the finished one)",
                 ("denoiser", "classifier", "synthesizer"))
#: The network presets of the autoencoder and the denoiser.
NETWORK = Option("network preset: tiny, thesis-kidney, or (autoencoder) tiny-8ch (8 latent channels, 1,024 codes) or "
                 "tiny-2x (one stride-2 level: a 2x finer latent grid), or (denoiser) tiny-3level (a third level, for "
                 "the finer grid)", ("autoencoder", "denoiser", "synthesizer"))


@dataclass(kw_only=True)
class TrainingRun:
    """What every training stage takes, declared once (``AutoencoderTraining``, ``DenoiserTraining`` and
    ``ClassifierTraining`` add their own and redeclare a default where theirs differs): iterations, batch,
    learning rate, validation, checkpoints, seed, device, precision, resume."""

    iterations: int = setting(1000, Option("training iterations", PARTS, "N", label="iterations", low=1))
    batch_size: int = setting(8, Option("patches (autoencoder) or latents per batch", PARTS, "N",
                                        label="batch size", low=1))
    lr: float = setting(1e-4, Option("learning rate", PARTS, "LR", label="learning rate", low=0, low_open=True))
    val_fraction: float = setting(0.2, Option("share of the cases held out for validation", (), label="validation "
                                              "fraction", low=0, high=0.95))
    val_every: int = setting(50, Option("validate every N iterations", PARTS, "N", label="val-every", low=1))
    checkpoint_every: int = setting(200, Option("checkpoint every N iterations", (), label="checkpoint-every",
                                                low=1))
    seed: int = setting(0, Option("random seed, 0..2^63-1", ALL_PARTS, label="seed", low=0, high=2**63 - 1))
    device: str = setting("auto", Option("auto, cpu, cuda, cuda:1, mps", ALL_PARTS, label="device"))
    precision: str = setting("auto", Option(
        "the networks' training steps: auto is bfloat16 autocast where the hardware runs it faster (CUDA from "
        "Ampere on; CPUs with AMX-BF16; the autoencoder on CUDA only), else float32; weights, optimiser "
        "and losses stay float32", ALL_PARTS, label="precision", choices=PRECISIONS))
    resume: bool = setting(False, Option("continue from OUT.work/checkpoint", PARTS, label="resume"))

    def __post_init__(self) -> None:
        found = problems(self)
        if found:
            raise InputError("; ".join(found))


@dataclass
class AutoencoderTraining(TrainingRun):
    """The autoencoder stage (the first: it writes a new bundle). ``spacing`` and ``roi_size`` go into
    ``preset_overrides`` (the bundle records them)."""

    data: str = required(DATA)
    organ: str = required(Option("organ preset", ("autoencoder", "all"), label="organ", choices=ORGANS))
    out: str = required(OUT)
    network: str = setting("tiny", NETWORK)
    preset_overrides: dict = field(default_factory=dict)
    spacing: float | None = setting(None, Option(
        "override the preset spacing (mm, isotropic; default: the organ preset's)", ("autoencoder",), "MM",
        label="spacing", low=0, low_open=True))
    roi_size: tuple[float, ...] | None = setting(None, Option(
        "ROI size in mm, X Y Z (default: the organ preset's)", ("autoencoder",), "MM", label="ROI size", low=0,
        low_open=True))
    batch_size: int = redeclared(TrainingRun, "batch_size", 2)
    lr: float = redeclared(TrainingRun, "lr", 3e-4)
    checkpoint_every: int = redeclared(TrainingRun, "checkpoint_every", 100)
    l1_weight: float = 4.0
    perceptual_weight: float = 4.0
    perceptual_weights: str | None = setting(None, Option(
        "local .safetensors of a 3D resnet10 (optional; default: no perceptual loss)", ("autoencoder",), "FILE"))
    adversarial_weight: float = 1.0
    adversarial_start: int = setting(10_000, Option(
        "the GAN losses start after this iteration (never, when >= --iterations: it says so; train all: default "
        "the preset's, tiny: off)", ("autoencoder", "all"), "N", label="adversarial start", low=0))
    name: str | None = setting(None, Option(
        "bundle name (default: <organ>-model, or <organ>-demo with --demo)", ("autoencoder", "all")))
    version: str = setting("0.1.0", Option("bundle version (later stages keep it)", ("autoencoder", "all")))
    demo: bool = setting(False, Option("mark the bundle as a demo / synthetic-data model", ("autoencoder", "all")))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.roi_size is not None and len(self.roi_size) != 3:
            raise InputError(f"the ROI size takes 3 values, X Y Z in mm (got {len(self.roi_size)})")
        self.preset_overrides = {**self.preset_overrides,
                                 **({"spacing_mm": [float(self.spacing)] * 3} if self.spacing else {}),
                                 **({"roi_size_mm": [float(v) for v in self.roi_size]} if self.roi_size else {})}


@dataclass
class DenoiserTraining(TrainingRun):
    """The latent denoiser on healthy structures (extends the autoencoder's bundle)."""

    data: str = required(DATA)
    bundle: str = required(EXTENDS)
    out: str = required(OUT)
    network: str = setting("tiny", NETWORK)
    iterations: int = redeclared(TrainingRun, "iterations", 2000)
    val_every: int = redeclared(TrainingRun, "val_every", 100)
    ema_decay: float = 0.995
    class_conditional: bool = setting(False, Option("train with labels for CFG", ("denoiser",)))
    label_dropout: float = 0.15
    latent_crop: tuple[int, ...] | None = setting(None, Option(
        "train on random crops of this many latent voxels, Z Y X (validation and use: whole latents); makes fine "
        "latent grids trainable on a CPU", ("denoiser",), "N", label="latent crop", low=1))
    lesion_free_windows: bool = setting(False, Option(
        "also train on the windows of unhealthy structures that hold no lesion (with --latent-crop; needs "
        "<case>/lesions.nii.gz): more healthy tissue where few structures are healthy", ("denoiser",)))


@dataclass
class ClassifierTraining(TrainingRun):
    """The noisy-latent classifier for guidance (extends the denoiser's bundle)."""

    data: str = required(DATA)
    bundle: str = required(EXTENDS)
    out: str = required(OUT)
    batch_size: int = redeclared(TrainingRun, "batch_size", 16)
    weight_decay: float = 1e-3
    frozen_levels: int | None = setting(None, Option(
        "backbone levels to freeze (default: half of them, 2 of 4 in the thesis network)", ("classifier",), "N",
        label="frozen levels", low=0))
    select_level: int = 250
    max_level: int | None = setting(None, Option(
        "train on noise levels 0..N only (default: all, 0..T, as the thesis); guidance from a start level L above N "
        "is then outside what the classifier saw", ("classifier",), "N", label="max level", low=0))
    lesion_weight: float = setting(0.0, Option(
        "> 0 also trains a per-cell lesion loss with this weight from each case's lesions.nii.gz (0: image labels "
        "only, as in the thesis)", ("classifier",), "W", label="lesion weight", low=0))
    lesion_cell_ml: float = setting(0.1, Option(
        "lesion volume (ml) that makes a feature cell a lesion cell", ("classifier",), "ML", label="lesion cell "
        "volume", low=0, low_open=True))


@dataclass
class SynthesizerTraining(TrainingRun):
    """The lesion synthesizer: a latent denoiser conditioned on the lesion map, on healthy and unhealthy structures
    with their lesion masks (extends any bundle with an autoencoder; ``synthesize --method diffusion`` uses it)."""

    data: str = required(DATA)
    bundle: str = required(EXTENDS)
    out: str = required(OUT)
    network: str = setting("tiny", NETWORK)
    iterations: int = redeclared(TrainingRun, "iterations", 1500)
    val_every: int = redeclared(TrainingRun, "val_every", 100)
    ema_decay: float = 0.995
    map_dropout: float = setting(0.2, Option(
        "share of training samples whose lesion map is dropped (classifier-free guidance on the map)",
        ("synthesizer",), "P", label="map dropout", low=0, high=1, high_open=True))
