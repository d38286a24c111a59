"""A lesion synthesised into a scene volume: the engine of the panel's "Synthesize lesion" section, without Qt.

The user paints the lesion as a segment (Segment Editor); :class:`SceneSynthesis` writes the volume, the organ mask
and that segment (the lesion map) to a private temporary folder and runs the worker's ``synthesize`` job
(:func:`~DiffusionAnomalyLib.synthesis.synthesize.synthesize`): ``paste`` (the phantoms' intensity model, no network:
runs on Slicer's own Python before anything is installed) or ``diffusion`` (the bundle's lesion synthesizer). The
result becomes a new volume (the input's grid, pixel type and value range; changed only around the lesion) and a
segmentation holding the lesion's truth; the input volume and the user's segmentations are never changed. Cancel
or failure add nothing. Torch-free: it runs in Slicer's own process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.slicer_module.scene_run import BASELINE, MASK_SOURCES, _sentence, cached_meta
from DiffusionAnomalyLib.slicer_module.worker_run import WorkerRun

#: The lesion-class choice that leaves the class to the seed.
AUTO = "auto"


@dataclass
class LesionRequest:
    """The "Synthesize lesion" settings: ``method`` ``paste`` or ``diffusion`` (``bundle``: the panel's chosen
    bundle, which must hold a lesion synthesizer), ``kind`` (paste: the lesion class, or :data:`AUTO`), ``seed``;
    ``mask_source`` as for a detection run; ``python``/``own_python``: the worker's interpreter."""

    organ: str
    method: str = "paste"
    bundle: str = ""
    kind: str = AUTO
    seed: int = 0
    mask_source: str = "segmentation"
    python: str = ""
    own_python: bool = True

    def options(self):
        from DiffusionAnomalyLib.synthesis.options import SynthesisOptions

        kind = None if self.kind == AUTO or self.method == "diffusion" else self.kind  # diffusion: from the map
        return SynthesisOptions(method=self.method, kind=kind, seed=self.seed)

    def problems(self) -> list[str]:
        """Everything that prevents a synthesis, as sentences (empty when it can start). The options are checked by
        :class:`~DiffusionAnomalyLib.synthesis.synthesize.SynthesisRequest` (the command line's one validation)."""
        from DiffusionAnomalyLib.detection.presets import get_preset
        from DiffusionAnomalyLib.settings import ORGANS
        from DiffusionAnomalyLib.synthesis.options import KINDS

        out = []
        if self.method == "diffusion":
            out += self._bundle_problems()
        modality = get_preset(self.organ).modality if self.organ in ORGANS else None
        if modality and self.method == "paste" and self.kind != AUTO and self.kind not in KINDS[modality]:
            out.append(f"The lesion class '{self.kind}' is not one of the {self.organ}'s ({modality}): choose "
                       f"{', '.join(KINDS[modality])} or auto.")
        if self.mask_source == "none" and self.organ != "brain":
            out.append(f"The {self.organ} needs an organ mask (only a skull-stripped brain can do without one).")
        try:
            self.synthesis_request(["input.nii.gz"], "out", None, "lesion.nii.gz")
        except InputError as exc:  # (the command line's words for what is said above in the panel's)
            out += [_sentence(p) for p in str(exc).split("; ")
                    if p and not any(flag in p for flag in ("--bundle", "--kind", "--skull-stripped"))]
        except (TypeError, ValueError) as exc:
            out.append(_sentence(str(exc)))
        if self.mask_source not in MASK_SOURCES:
            out.append(f"Unknown organ-mask source {self.mask_source!r}.")
        if self.python and not Path(self.python).is_file():
            out.append(f"The Python interpreter {self.python} does not exist.")
        return out

    def _bundle_problems(self) -> list[str]:
        from DiffusionAnomalyLib.models.bundle import BundleError

        if not self.bundle or self.bundle == BASELINE:
            return ["The diffusion method needs a model bundle with a lesion synthesizer; without a model choose "
                    "'paste' (no network, runs without PyTorch)."]
        try:
            meta = cached_meta(self.bundle)
        except BundleError as exc:
            return [str(exc)]
        if meta.organ != self.organ:
            return [f"The bundle '{meta.name}' is for the {meta.organ}, not the {self.organ}."]
        if not (meta.networks or {}).get("synthesizer"):
            return [f"The bundle '{meta.name}' has no lesion synthesizer (train one with `diffusion-anomaly train "
                    "synthesizer`); choose 'paste', which needs none."]
        return []

    def synthesis_request(self, images: Sequence[str | Path], out: str | Path, mask: str | Path | None,
                          lesion_map: str | Path):
        """The worker's :class:`~DiffusionAnomalyLib.synthesis.synthesize.SynthesisRequest` (one variant)."""
        from DiffusionAnomalyLib.synthesis.synthesize import SynthesisRequest

        return SynthesisRequest(
            images=tuple(str(p) for p in images), organ=self.organ, out=str(out), lesion_map=str(lesion_map),
            bundle=str(self.bundle) if self.method == "diffusion" else None,
            mask=None if mask is None or self.mask_source == "none" else str(mask),
            skull_stripped=self.mask_source == "none", options=self.options())


def lesion_segment_problem(segmentation, segment_id: str) -> str:
    """Why the chosen lesion segment cannot be used ("" when it can); reads no voxels."""
    if segmentation is None:
        return "Choose the segmentation that holds the lesion (paint it with Segment Editor)."
    if not segment_id or segmentation.GetSegmentation().GetSegment(segment_id) is None:
        return f"Choose the lesion segment of '{segmentation.GetName()}'."
    return ""


class SceneSynthesis(WorkerRun):
    """One lesion synthesised into ``input_nodes`` (the first volume, then MRI channels 2-4) inside the organ
    (``mask_segmentation`` with ``mask_segment_ids``, or the request's other mask source), shaped as the segment
    ``lesion_segment_id`` of ``lesion_segmentation``. Poll it until :attr:`finished`; then :attr:`volumes` are the
    new volume nodes (one per channel) and :attr:`truth` the segmentation of the synthesised lesion."""

    PREFIX = "da-slicer-synthesis-"

    def __init__(self, scene, request: LesionRequest, input_nodes: Sequence, mask_segmentation, mask_segment_ids:
                 Sequence[str], lesion_segmentation, lesion_segment_id: str, client_factory: Callable | None = None,
                 on_event: Callable[[dict], None] | None = None) -> None:
        super().__init__(scene, request.python, request.own_python, client_factory, on_event)
        self.request = request
        self.input_nodes = list(input_nodes)
        self.mask_segmentation = mask_segmentation
        self.mask_segment_ids = list(mask_segment_ids)
        self.lesion_segmentation = lesion_segmentation
        self.lesion_segment_id = lesion_segment_id
        self.volumes: list = []
        self.truth = None
        self.record: dict = {}
        first = self.input_nodes[0].GetName() if self.input_nodes else "volume"
        self.name = f"{first} + lesion ({request.method}, seed {request.seed})"

    def _check(self) -> None:
        from DiffusionAnomalyLib.detection.presets import get_preset
        from DiffusionAnomalyLib.slicer_module import scene as adapter

        problems = self.request.problems()
        channels = list(get_preset(self.request.organ).channels) if not problems else []
        problem = (adapter.channel_nodes_problem(self.input_nodes, channels)
                   if len(channels) > 1 or len(self.input_nodes) > 1
                   else adapter.volume_node_problem(self.input_nodes[0] if self.input_nodes else None))
        problems += [p for p in (problem, lesion_segment_problem(self.lesion_segmentation, self.lesion_segment_id))
                     if p]
        if self.request.mask_source == "segmentation" and self.mask_segmentation is None:
            problems.append(f"Choose the segmentation that holds the {self.request.organ}.")
        if problems:
            raise InputError(" ".join(problems))

    def _prepare(self, tmp: Path):
        from DiffusionAnomalyLib.imaging.io import write_volume
        from DiffusionAnomalyLib.slicer_module import scene as adapter

        reference = self.input_nodes[0]
        images, mask = self._write_inputs(tmp, self.input_nodes, self.mask_segmentation
                                          if self.request.mask_source == "segmentation" else None,
                                          self.mask_segment_ids)
        lesion = adapter.mask_from_segments(self.scene, self.lesion_segmentation, [self.lesion_segment_id], reference,
                                            what="lesion segment")
        lesion_map = write_volume(lesion > 0, tmp / "lesion.nii.gz", compress=False)
        segment = self.lesion_segmentation.GetSegmentation().GetSegment(self.lesion_segment_id)
        self.aliases[str(lesion_map)] = f"the segment '{segment.GetName()}' of '{self.lesion_segmentation.GetName()}'"
        self.aliases[str(images[0])] = f"the volume '{reference.GetName()}'"
        return self.request.synthesis_request(images, tmp / "out", mask, lesion_map)

    def _add_to_scene(self, result: dict) -> None:
        from DiffusionAnomalyLib.slicer_module import scene as adapter

        (case,) = result["cases"]
        self.record = case["record"]
        self.volumes, self.truth = adapter.add_synthesis(self.scene, self.input_nodes, case, self.name,
                                                         self.request.organ)
