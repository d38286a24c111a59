"""One detection run started from a Slicer scene, without any GUI: the engine of the panel's Logic.

:class:`RunRequest` holds the panel's settings, says what is wrong with them (:meth:`RunRequest.problems`) and
builds the worker's :class:`~DiffusionAnomalyLib.api.DetectRequest`. :class:`SceneRun` (a
:class:`~DiffusionAnomalyLib.slicer_module.worker_run.WorkerRun`) writes the input volumes (and organ mask) to a
private temporary folder, starts the worker, is polled (the panel polls it from a timer, so the GUI never blocks),
and on success adds the results to the scene through :mod:`DiffusionAnomalyLib.slicer_module.scene`. Cancel,
failure or a crash leave the scene as it was; the temporary folder is always removed. Nothing here imports
torch: it runs in Slicer's own process before the worker's packages are installed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.settings import DEVICES
from DiffusionAnomalyLib.slicer_module.worker_run import WorkerRun

MASK_SOURCES = ("segmentation", "totalsegmentator", "none")
#: ``RunRequest.bundle`` for the non-neural median baseline (no model; runs on Slicer's own Python, no PyTorch).
BASELINE = "median-baseline"
#: The run settings the baseline uses (its post-processing); the panel's sampler settings do not apply to it.
BASELINE_SETTINGS = ("threshold", "min_lesion_ml", "grow_to", "floor_contrast")


@dataclass
class RunRequest:
    """The settings of one run, as the panel's parameter node holds them.

    ``bundle`` is a bundle folder or zip; ``settings`` the run settings the panel sets, as
    :class:`~DiffusionAnomalyLib.settings.RunSettings` fields (absent or None: the bundle's recommendation;
    ``threshold``: a number, ``"otsu"`` or ``"bundle"``); ``python`` the interpreter that has the dependencies
    (empty: the current one). ``mask_source``: ``segmentation`` (segments of an existing segmentation),
    ``totalsegmentator`` (the worker runs TotalSegmentator on the input, so the GUI never waits for it) or
    ``none`` (skull-stripped brain: the mask is the scan's nonzero voxels). ``bundle`` :data:`BASELINE` runs the
    non-neural median baseline (its threshold and post-processing settings apply; the sampler's are ignored).
    ``own_python``: ``python`` is Slicer's own interpreter (it keeps Slicer's environment; any other is started
    with the startup environment, :func:`worker_environment`).
    """

    organ: str
    bundle: str
    settings: dict = field(default_factory=dict)
    mask_source: str = "segmentation"
    python: str = ""
    own_python: bool = True

    @property
    def baseline(self) -> bool:
        return self.bundle == BASELINE

    def problems(self) -> list[str]:
        """Everything that prevents a run, as sentences for a tooltip (empty when it can run). The run settings
        are checked by :class:`~DiffusionAnomalyLib.settings.RunSettings` (one validation for every front end)."""
        out = []
        bundle_ok = False
        if not self.bundle:
            out.append(f"No model bundle for the {self.organ}: import one (Import bundle...).")
        elif self.baseline:
            bundle_ok = True
        else:
            found = self._bundle_problems()
            out.extend(found)
            bundle_ok = not found
        if bundle_ok:
            try:
                self.run_settings()
            except InputError as exc:
                out.extend(_sentence(p) for p in str(exc).split("; ") if p)
            except (TypeError, ValueError) as exc:
                out.append(_sentence(str(exc)))
        device = self.settings.get("device") or "auto"
        if device not in DEVICES:
            out.append(f"Unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
        threshold = self.settings.get("threshold")
        if isinstance(threshold, str) and threshold not in ("bundle", "otsu"):
            out.append(f"Unknown threshold {threshold!r}: a number, 'otsu' or 'bundle'.")
        if self.mask_source not in MASK_SOURCES:
            out.append(f"Unknown organ-mask source {self.mask_source!r}.")
        if self.mask_source == "none" and self.organ != "brain":
            out.append(f"The {self.organ} needs an organ mask (only a skull-stripped brain can run without one).")
        if self.python and not Path(self.python).is_file():
            out.append(f"The Python interpreter {self.python} does not exist.")
        return out

    def _bundle_problems(self) -> list[str]:
        from DiffusionAnomalyLib.models.bundle import BundleError

        try:
            meta = cached_meta(self.bundle)
        except BundleError as exc:
            return [str(exc)]
        if meta.organ != self.organ:
            return [f"The bundle '{meta.name}' is for the {meta.organ}, not the {self.organ}; choose a {self.organ} "
                    "bundle."]
        return []

    def run_settings(self):
        """The run's :class:`~DiffusionAnomalyLib.settings.RunSettings`: the bundle's recommendations with the
        panel's values on top, resolved once (the worker receives exactly this object as JSON)."""
        from DiffusionAnomalyLib.settings import RunSettings

        if self.baseline:
            from DiffusionAnomalyLib.detection.presets import get_preset

            used = {k: v for k, v in self.settings.items() if k in BASELINE_SETTINGS}  # no sampler: the rest is moot
            return RunSettings.resolve({}, get_preset(self.organ), **used)
        meta = cached_meta(self.bundle)
        return RunSettings.resolve(meta.recommended, meta.preset(), **self.settings)

    def channels(self) -> list[str]:
        """The input channels the run takes (the bundle's; the baseline: the organ preset's)."""
        if self.baseline:
            from DiffusionAnomalyLib.detection.presets import get_preset

            return list(get_preset(self.organ).channels)
        return list(cached_meta(self.bundle).channels)

    def detect_request(self, inputs: Sequence[str | Path], out: str | Path, mask: str | Path | None):
        """The worker's :class:`~DiffusionAnomalyLib.api.DetectRequest`: inputs, mask, output folder and the run
        settings resolved once (:meth:`run_settings`; the baseline: its threshold and post-processing); no
        ``overview.png`` (the scene is the picture, and the baseline's worker has no matplotlib)."""
        from DiffusionAnomalyLib.api import DetectRequest

        problems = self.problems()
        if problems:
            raise InputError(" ".join(problems))
        if mask is None and self.mask_source == "segmentation":  # without a mask the worker runs TotalSegmentator
            raise InputError(f"No organ mask for the {self.organ}: choose a segmentation with the organ, or let "
                             "TotalSegmentator make one.")
        settings = self.run_settings().to_dict()
        if self.baseline:
            settings = {k: v for k, v in settings.items() if k in BASELINE_SETTINGS}
        settings["threshold"] = "otsu" if settings["threshold"] is None else settings["threshold"]
        return DetectRequest(images=tuple(str(p) for p in inputs), out=str(out), organ=self.organ,
                             bundle=None if self.baseline else str(self.bundle), baseline=self.baseline,
                             mask=None if mask is None or self.mask_source == "none" else str(mask),
                             skull_stripped=self.mask_source == "none", settings=settings, overview=False)


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "."


_META_CACHE: dict[tuple[str, float], object] = {}


def cached_meta(folder: str | Path):
    """A bundle's :class:`~DiffusionAnomalyLib.models.bundle.BundleMeta`, read once per version of its ``model.json``
    (the panel asks on every change of a setting)."""
    from DiffusionAnomalyLib.models.bundle import BundleError, read_meta

    zipped = Path(folder).suffix == ".zip"
    p = Path(folder) if zipped else Path(folder) / "model.json"
    try:
        key = (str(p.resolve()), p.stat().st_mtime)
    except OSError:
        raise BundleError(f"{folder}: not a model bundle (no model.json)") from None
    if key not in _META_CACHE:
        _META_CACHE[key] = _zipped_meta(p) if zipped else read_meta(folder)
    return _META_CACHE[key]


def _zipped_meta(path: Path):
    """The ``model.json`` of a bundle .zip, read without extracting it."""
    import json
    import zipfile

    from DiffusionAnomalyLib.models.bundle import BundleError, BundleMeta

    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.rsplit("/", 1)[-1] == "model.json"]
            if len(names) != 1:
                raise BundleError(f"{path}: expected exactly one model.json in the archive, found {len(names)}")
            return BundleMeta.from_dict(json.loads(z.read(names[0])), f"{path}:{names[0]}")
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not a readable bundle archive ({exc})") from None


def run_name(request: RunRequest, input_name: str) -> str:
    """The subject-hierarchy folder name of a run, e.g. ``"CT kidney ddpm L250 s0 14:02:31"``."""
    if request.baseline:
        return f"{input_name} {request.organ} median baseline {time.strftime('%H:%M:%S')}"
    try:
        s = request.run_settings()
        what = f"{s.sampler} L{s.noise_level} s{s.guidance:g}"
    except Exception:  # noqa: BLE001 - a name for a run that will fail its checks
        what = "?"
    return f"{input_name} {request.organ} {what} {time.strftime('%H:%M:%S')}"


class SceneRun(WorkerRun):
    """One detection run from scene nodes to results in the scene (:class:`~.worker_run.WorkerRun`: poll it until
    :attr:`finished`). ``output_dir``: also keep the run's files there (written atomically by the worker); by
    default they live in the temporary folder and go with it. ``client_factory`` and ``on_event`` as for
    :class:`~.worker_run.WorkerRun`; the interpreter is ``request.python``.
    """

    def __init__(self, scene, request: RunRequest, input_nodes: Sequence, mask_segmentation=None,
                 mask_segment_ids: Sequence[str] = (), client_factory: Callable | None = None,
                 on_event: Callable[[dict], None] | None = None, output_dir: str | Path | None = None) -> None:
        super().__init__(scene, request.python, request.own_python, client_factory, on_event)
        self.request = request
        self.input_nodes = list(input_nodes)
        self.mask_segmentation = mask_segmentation
        self.mask_segment_ids = list(mask_segment_ids)
        self.output_dir = Path(output_dir) if output_dir else None
        self.result_nodes = None
        self.channels: list[str] = []  # the bundle's input channels (read in start)
        self.settings = None  # the resolved RunSettings (in start)
        self.name = run_name(request, self.input_nodes[0].GetName() if self.input_nodes else "volume")

    def _check(self) -> None:
        from DiffusionAnomalyLib.slicer_module import scene as scene_adapter

        problems = self.request.problems()
        if problems:
            raise InputError(" ".join(problems))
        channels = self.channels = self.request.channels()
        problem = (scene_adapter.channel_nodes_problem(self.input_nodes, channels) if len(channels) > 1
                   else scene_adapter.volume_node_problem(self.input_nodes[0] if self.input_nodes else None))
        if problem:
            raise InputError(problem)

    def _prepare(self, tmp: Path):
        segmentation = self.request.mask_source == "segmentation"
        if segmentation and self.mask_segmentation is None:
            raise InputError(f"No organ mask for the {self.request.organ}: choose a segmentation with the organ, or "
                             "let TotalSegmentator make one.")
        inputs, mask = self._write_inputs(tmp, self.input_nodes, self.mask_segmentation if segmentation else None,
                                          self.mask_segment_ids)
        self.settings = self.request.run_settings()  # resolved once; the worker and the nodes get this
        return self.request.detect_request(inputs, self.output_dir or tmp / "out", mask)

    def _add_to_scene(self, result: dict) -> None:
        from DiffusionAnomalyLib.slicer_module import scene as scene_adapter

        channels = self.channels
        recon = "reconstruction.nii.gz" if len(channels) == 1 else f"reconstruction_{channels[0]}.nii.gz"
        request = {"organ": self.request.organ, "bundle": self.request.bundle, "mask_source": self.request.mask_source}
        baseline = {"reconstruction": "non-neural median baseline (no model)", "threshold": self.settings.threshold}
        settings = baseline if self.request.baseline else self.settings.to_dict()
        attributes = scene_adapter.run_attributes(result, {**request, **settings, "run": self.name})
        self.result_nodes = scene_adapter.add_results(
            self.scene, self.input_nodes[0], result["outputs"], result.get("lesions", []), self.name, attributes,
            self.request.organ, reconstruction_file=recon)
