"""The options of ``synthesize``, declared once (stdlib only: the command line imports this to build its parser)."""

from __future__ import annotations

from dataclasses import dataclass

from DiffusionAnomalyLib.options import MAX_SEED, Option, setting

#: The shape library: a sphere, and the varied phantom generator's shapes (``synthetic.base.VARIED_SHAPES``).
SHAPES = ("sphere", "ellipsoid", "lobulated", "multifocal", "irregular")
#: Lesion classes by modality (CT: ``synthetic.base.KINDS_CT``, the phantoms' classes).
KINDS = {"CT": ("hypo", "hyper", "iso", "cyst"), "MR": ("mass",)}
#: Diameter limits (mm) of a drawn shape.
DIAMETER_RANGE_MM = (5.0, 80.0)

#: Insertion methods: ``paste`` (no network), ``diffusion`` (the bundle's lesion synthesizer).
METHODS = ("paste", "diffusion")
#: The most variants one call writes.
MAX_COUNT = 1000
CMD = ("synthesize",)


@dataclass(frozen=True)
class SynthesisOptions:
    """What to insert, declared once (the command line's options; the request checks them)."""

    method: str = setting("paste", Option(
        "how the lesion is made: paste (the phantom generator's intensity model, blended in; no network) or "
        "diffusion (the --bundle's lesion synthesizer, conditioned on the lesion map, inpainting in latent space)",
        CMD, label="method", choices=METHODS))
    shape: str | None = setting(None, Option(
        "lesion shape from the library, placed inside the organ by --seed (default: drawn by --seed)", CMD,
        label="shape", choices=SHAPES))
    diameter_mm: float | None = setting(None, Option(
        f"lesion diameter with --shape, {DIAMETER_RANGE_MM[0]:g}..{DIAMETER_RANGE_MM[1]:g} mm (default: drawn "
        "from the incidental small-renal-mass mix, median 20 mm)", CMD, metavar="MM", label="diameter",
        low=DIAMETER_RANGE_MM[0], high=DIAMETER_RANGE_MM[1]))
    kind: str | None = setting(None, Option(
        "paste: lesion class, CT hypo, hyper, iso or cyst; MRI mass (default: drawn by --seed)", CMD, label="kind",
        choices=tuple(dict.fromkeys(k for ks in KINDS.values() for k in ks))))
    structure: str | None = setting(None, Option(
        "the structure that gets the drawn lesion, e.g. kidney_left (default: drawn by --seed)", CMD,
        label="structure"))
    count: int = setting(1, Option(f"variants to write, 1..{MAX_COUNT} (seeds seed..seed+N-1)", CMD, metavar="N",
                                   label="count", low=1, high=MAX_COUNT))
    seed: int = setting(0, Option("random seed of the first variant, 0..2^63-1", CMD, label="seed", low=0,
                                  high=MAX_SEED))


    steps: int = setting(50, Option("diffusion: denoising steps from pure noise (T) to 0", CMD, metavar="N",
                                    label="steps", low=1, high=1000))
    resample_jumps: int = setting(2, Option("diffusion: RePaint resampling, each step repeated R times", CMD,
                                            metavar="R", label="resample jumps", low=1, high=20))
    map_guidance: float = setting(1.0, Option(
        "diffusion: classifier-free guidance weight w on the lesion map (0: the conditional estimate alone)", CMD,
        metavar="W", label="map guidance", low=0, high=20))
