"""Model bundles (docs/model-bundles.md): a folder (or a .zip of one) with ``model.json`` and safetensors weights.

``model.json`` holds the format version, organ and modality, channel names, the full organ preset the
bundle was made with (``organ_preset``; bundles made before it hold only ``preset_overrides`` on the code's
preset), latent shape and scale factor, noise schedule, network configurations, recommended sampler
settings and threshold, training-data description, licence (``license``; ``licence`` in older bundles),
intended use, whether it is a demo model, the software versions that wrote it, its own changelog and the
SHA-256 of every weight file. Weights are ``autoencoder.safetensors``, ``denoiser.safetensors`` (EMA) and
optionally ``classifier.safetensors`` and ``synthesizer.safetensors`` (lesion synthesis). Pickled weights are never
loaded.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from DiffusionAnomalyLib.detection.presets import OrganPreset, get_preset
from DiffusionAnomalyLib.errors import BundleError, BundleExistsError, InputError, NoDemoBundleError
from DiffusionAnomalyLib.imaging.outputs import (
    atomic_output_dir,
    check_name,
    check_output_dir,
    read_json,
    write_text_atomic,
)
from DiffusionAnomalyLib.models.schema import check_model_json

if TYPE_CHECKING:  # torch is imported where weights are handled, so listing bundles works without it (Slicer)
    import torch
    from torch import nn

FORMAT_VERSION = 1
WEIGHT_FILES = ("autoencoder", "denoiser", "classifier", "synthesizer")
#: What loading a bundle builds unless asked for other parts (the synthesizer only for ``synthesize``).
DETECTION_PARTS = WEIGHT_FILES[:3]
REQUIRED_FIELDS = ("format_version", "name", "version", "organ", "modality", "channels", "networks")
_RECORDED = ("organ_preset", "software", "changelog")  # written when recorded (BundleMeta.record), absent before


@dataclass
class BundleMeta:
    """The content of ``model.json`` (everything but the weights)."""

    name: str
    version: str
    organ: str
    modality: str
    channels: list[str]
    networks: dict[str, dict | None]
    preset_overrides: dict[str, Any] = field(default_factory=dict)
    latent: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=lambda: {"num_timesteps": 1000, "beta_start": 1e-4,
                                                               "beta_end": 0.02, "kind": "linear"})
    recommended: dict[str, Any] = field(default_factory=dict)
    training_data: str | dict[str, Any] = ""  # what, how many, where from: a description, never a local path
    license: str = ""  # of the weights, e.g. an SPDX identifier; read from ``licence`` in older bundles
    intended_use: str = ""
    summary: str = ""  # the model card's fields (docs/model-bundles.md); empty in bundles made before them
    out_of_scope_use: str = ""
    evaluation: dict[str, Any] = field(default_factory=dict)
    limitations: str = ""
    citation: str = ""
    demo: bool = False
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    organ_preset: dict[str, Any] = field(default_factory=dict)  # the full preset (OrganPreset.to_dict); {} = older
    software: dict[str, str] = field(default_factory=dict)  # versions that last wrote it (software_versions())
    changelog: list[dict[str, str]] = field(default_factory=list)  # {version, date, change}, oldest first
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def licence(self) -> str:
        """The old name of :attr:`license` (bundles and callers from before it); reads and writes ``license``."""
        return self.license

    @licence.setter
    def licence(self, value: str) -> None:
        self.license = value

    def to_dict(self) -> dict:
        """``model.json``'s content; the preset, software and changelog only when recorded (older bundles keep
        their form when read and written back)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if getattr(self, k) or k not in _RECORDED}

    @classmethod
    def from_dict(cls, d: dict, source: str = "model.json") -> BundleMeta:
        if "licence" in d:  # the key of bundles made before 0.3.0; written as ``license`` from then on
            if "license" in d:
                raise BundleError(f"{source}: both 'licence' and 'license'; keep 'license'")
            d = {("license" if k == "licence" else k): v for k, v in d.items()}
        missing = [k for k in REQUIRED_FIELDS if k not in d]
        if missing:
            raise BundleError(f"{source}: required field(s) missing: {missing}")
        if d["format_version"] != FORMAT_VERSION:
            raise BundleError(f"{source}: unknown bundle format version {d['format_version']!r}; this version of "
                              f"DiffusionAnomaly reads format {FORMAT_VERSION} - update DiffusionAnomaly or re-export "
                              "the bundle")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise BundleError(f"{source}: unknown field(s) {unknown}")
        check_name(d["name"], f"{source}: name", BundleError)  # it becomes a folder name when installed
        check_name(str(d["version"]), f"{source}: version", BundleError)
        check_model_json(d, source)
        return cls(**d)

    def preset(self) -> OrganPreset:
        """The organ preset the bundle was made with: the stored ``organ_preset`` (so a changed default in the code
        changes no bundle's results); for bundles made before it, the code's preset with ``preset_overrides``.
        A preset field added to the code since the bundle was made keeps the code's default."""
        if not self.organ_preset:
            return get_preset(self.organ).with_overrides({**self.preset_overrides, "channels": list(self.channels)})
        try:
            return get_preset(self.organ).with_overrides({**self.organ_preset, "channels": list(self.channels)})
        except (InputError, TypeError) as exc:
            raise BundleError(f"model.json of {self.name} {self.version}: organ_preset does not fit this version of "
                              f"DiffusionAnomaly ({exc})") from None

    def weights_id(self) -> str:
        """8 hex digits naming the networks (weight checksums, schedule, latent scaling) and the preset they run
        with (ROI geometry, normalisation, ...: :meth:`preset`, stored or the code's): what an anomaly map depends
        on besides the sampler settings. Recalibration (a new threshold) keeps it, also when it stores the preset
        of a bundle made before ``organ_preset``; a changed code default changes it for such bundles."""
        basis = [self.files, self.schedule, self.latent, self.preset().to_dict(), list(self.channels)]
        return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:8]

    def record(self, change: str, when: datetime.date | None = None) -> None:
        """Before writing a new or changed bundle: store the preset it was made with (if not yet stored), the
        software versions writing it, and ``change`` as a changelog entry for its current version."""
        if not self.organ_preset:
            self.organ_preset = json.loads(json.dumps(self.preset().to_dict()))
        self.software = software_versions()
        self.changelog = [*self.changelog, {"version": str(self.version),
                                            "date": (when or datetime.date.today()).isoformat(), "change": change}]


def software_versions() -> dict[str, str]:
    """The versions of this project, Python, torch, MONAI and numpy (as installed; nothing is imported)."""
    import platform
    from importlib import metadata

    from DiffusionAnomalyLib import __version__

    found = {"diffusion_anomaly": __version__, "python": platform.python_version()}
    for name in ("torch", "monai", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundle_digest(folder: str | os.PathLike) -> str:
    """SHA-256 identifying a bundle: over ``model.json`` and the weight files, by name and content."""
    folder = Path(folder)
    h = hashlib.sha256()
    for name in sorted(["model.json"] + [f"{w}.safetensors" for w in WEIGHT_FILES]):
        p = folder / name
        if p.exists():
            h.update(name.encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def save_bundle(folder: str | os.PathLike, meta: BundleMeta, networks: dict[str, nn.Module],
                extra_files: dict[str, Path] | None = None, change: str = "") -> Path:
    """Write a bundle atomically; records each weight file's SHA-256 in ``model.json`` and, with ``change``, the
    preset, the software versions and a changelog entry (:meth:`BundleMeta.record`).

    ``extra_files`` (name -> source path) are copied in too, e.g. training logs and loss curves.
    """
    from safetensors.torch import save_file

    unknown = set(networks) - set(WEIGHT_FILES)
    if unknown:
        raise InputError(f"unknown network name(s) {sorted(unknown)}; use {list(WEIGHT_FILES)}")
    if change:
        meta.record(change)
    with atomic_output_dir(folder) as stage:
        files = {}  # exactly the weights written now: nothing stale from an earlier bundle
        for name, net in networks.items():
            state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
            save_file(state, str(stage / f"{name}.safetensors"))
            files[f"{name}.safetensors"] = sha256_file(stage / f"{name}.safetensors")
        meta.files = files
        for name, src in (extra_files or {}).items():
            if Path(src).is_file():
                shutil.copy2(src, stage / name)
        (stage / "model.json").write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
    return Path(folder)


def read_meta(folder: str | os.PathLike) -> BundleMeta:
    if Path(folder).name == "model.json" and Path(folder).is_file():
        raise BundleError(f"{folder}: give the bundle folder ({Path(folder).parent}), not its model.json")
    p = Path(folder) / "model.json"
    if not p.is_file():
        raise BundleError(f"{folder}: not a model bundle (no model.json)")
    check_inside(Path(folder), p)
    data = read_json(p, "model.json", BundleError)
    if not isinstance(data, dict):
        raise BundleError(f"{p}: not a model.json (a JSON object is expected)")
    try:
        return BundleMeta.from_dict(data, str(p))
    except TypeError as exc:
        raise BundleError(f"{p}: invalid model.json ({exc})") from None


def check_inside(folder: Path, path: Path) -> None:
    """Refuse a file of the bundle that is a link leading out of the bundle folder."""
    root = folder.resolve()
    target = path.resolve()
    if target != root and root not in target.parents:
        raise BundleError(f"{path}: a link that leaves the bundle (to {target}); a bundle's files must be inside it")


def shipped_manifest() -> Path | None:
    """``Resources/Models/manifest.json`` (None when the resources are not installed); ``$DA_BUNDLE_MANIFEST``
    names another manifest, or none when set but empty (for ``train all``, whose new bundle may share a listed
    bundle's name and version until :func:`install_bundle` writes its entry)."""
    if "DA_BUNDLE_MANIFEST" in os.environ:
        env = os.environ["DA_BUNDLE_MANIFEST"]
        return Path(env) if env else None
    try:
        from DiffusionAnomalyLib.resources import resources_dir

        p = resources_dir() / "Models" / "manifest.json"
    except FileNotFoundError:
        return None
    return p if p.is_file() else None


def read_manifest(manifest: str | os.PathLike) -> dict:
    """A bundle manifest (``{"format_version": 1, "bundles": [{"name": ..., ...}, ...]}``), checked: a
    :class:`BundleError` naming the file for anything else (also when it comes through ``DA_BUNDLE_MANIFEST``)."""
    data = read_json(manifest, "bundle manifest", BundleError)
    if not isinstance(data, dict) or not isinstance(data.get("bundles", []), list) or not all(
            isinstance(b, dict) and isinstance(b.get("name"), str) for b in data.get("bundles", [])):
        raise BundleError(f"{manifest}: the bundle manifest is not valid (a JSON object whose 'bundles' is a list of "
                          "objects with a 'name' is expected)")
    return data


def check_install(models_dir: str | os.PathLike, name: str, option: str = "--install") -> Path:
    """What :func:`install_bundle` needs, checked before any work: ``name`` is one safe folder name, the models
    folder is writable, its ``manifest.json`` (if any) is valid, and ``models_dir/<name>`` is absent or a bundle
    (an earlier install, replaced). Returns the folder the bundle will be installed as."""
    check_name(name, f"{option}: the bundle name")
    models = Path(models_dir)
    if models.exists() and not models.is_dir():
        raise InputError(f"{models}: {option} is a file, not a models folder")
    if (models / "manifest.json").exists():
        read_manifest(models / "manifest.json")
    check_output_dir(models, option=option, resume=True, own=lambda d: True)  # writable; other bundles stay
    return check_output_dir(models / name, option=f"{option} ({name}/)", overwrite=True, command="import-bundle")


def install_bundle(bundle: str | os.PathLike, models_dir: str | os.PathLike) -> Path:
    """Copy ``bundle`` into the models folder ``models_dir`` as ``<name>/`` (replacing an earlier copy as a whole)
    and list it, with its SHA-256, in ``models_dir/manifest.json`` (an entry of the same name is replaced); both
    written atomically. Returns the installed folder."""
    meta = read_meta(bundle)
    dest = check_install(models_dir, meta.name)
    manifest = Path(models_dir) / "manifest.json"
    data = read_manifest(manifest) if manifest.is_file() else {"format_version": 1, "bundles": []}
    with atomic_output_dir(dest, replace_previous=True) as stage:
        for f in Path(bundle).iterdir():
            if f.is_file():
                shutil.copy2(f, stage / f.name)
    _remove_stale(dest, {f.name for f in Path(bundle).iterdir() if f.is_file()})
    entry = {"name": meta.name, "version": meta.version, "organ": meta.organ, "sha256": bundle_digest(dest),
             "demo": bool(meta.demo), "location": f"{meta.name}/ (in this models folder)",
             "description": meta.summary or f"{meta.name} {meta.version}"}
    data["bundles"] = [b for b in data.get("bundles", []) if b.get("name") != meta.name] + [entry]
    data["bundles"].sort(key=lambda b: str(b.get("name")))
    write_text_atomic(manifest, json.dumps(data, indent=2) + "\n")
    return dest


def verify_files(folder: Path, meta: BundleMeta) -> None:
    """Every weight file listed in model.json exists and has the recorded SHA-256; no pickles."""
    for pickled in list(folder.glob("*.pt")) + list(folder.glob("*.pth")) + list(folder.glob("*.ckpt")):
        raise BundleError(f"{pickled}: pickled weights are never loaded; convert them to safetensors")
    for f in folder.iterdir():
        if f.is_symlink():
            check_inside(folder, f)
    for name, digest in meta.files.items():
        p = folder / name
        if "/" in name or "\\" in name or name.startswith("."):
            raise BundleError(f"{folder}: model.json names the weight file {name!r}, which is not a file of the bundle")
        if not p.is_file():
            raise BundleError(f"{folder}: weight file {name} is missing")
        check_inside(folder, p)
        actual = sha256_file(p)
        if actual != digest:
            raise BundleError(f"{p}: checksum mismatch (SHA-256 {actual[:12]}..., model.json says {digest[:12]}...); "
                              "the file is corrupt or was replaced")


def manifest_entry(meta: BundleMeta, manifest: str | os.PathLike | None) -> dict | None:
    """The manifest's entry for this bundle's name and version, or None (no manifest, or not listed: a changed copy
    of a listed bundle needs another version)."""
    if manifest is None or not Path(manifest).exists():
        return None
    return next((e for e in read_manifest(manifest)["bundles"]
                 if e.get("name") == meta.name and str(e.get("version")) == str(meta.version)), None)


def verify_manifest(folder: Path, meta: BundleMeta, manifest: str | os.PathLike | None) -> None:
    """If the manifest lists this bundle (name and version), its SHA-256 must match."""
    if (e := manifest_entry(meta, manifest)) is not None and e.get("sha256") != (digest := bundle_digest(folder)):
        raise BundleError(f"{folder}: SHA-256 {digest[:12]}... does not match the manifest entry for "
                          f"{meta.name} {meta.version} ({str(e.get('sha256'))[:12]}...)")


def _build(name: str, meta: BundleMeta) -> nn.Module:
    from DiffusionAnomalyLib.models.nets import autoencoder, classifier, denoiser, synthesizer

    cfg = meta.networks.get(name)
    if name != "classifier":  # each module's <Name>Config and build_<name>
        module = {"autoencoder": autoencoder, "denoiser": denoiser, "synthesizer": synthesizer}[name]
        return getattr(module, f"build_{name}")(getattr(module, f"{name.capitalize()}Config").from_dict(cfg))
    head = dict(cfg)
    backbone = denoiser.DenoiserConfig.from_dict(head.pop("backbone"))
    return classifier.LatentClassifier(backbone, **{k: tuple(v) if isinstance(v, list) else v for k, v in head.items()})


def _weights_problem(path: Path, exc: BaseException) -> str:
    """What a weight file that safetensors cannot read is: a pickle (torch.save: a zip or a protocol-2+ pickle), a
    truncated safetensors file (its header says more bytes than the file has), or something else."""
    import struct

    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{":  # a safetensors header: u64 length, then JSON
        need = 8 + struct.unpack("<Q", head[:8])[0]
        if size < need:
            return f"the safetensors file is truncated ({size} bytes; its header alone needs {need})"
        return (f"not a valid safetensors file (corrupt, {size} bytes; {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]})")
    if head[:2] == b"PK" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return "a pickle (refused: pickled weights are never loaded)"
    reason = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"not a valid safetensors file ({size} bytes; {type(exc).__name__}: {reason})"


def load_weights(net: nn.Module, path: Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load safetensors weights, listing every missing, unexpected or mis-shaped tensor on failure."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device=str(device))
    except Exception as exc:  # SafetensorError and friends: a pickle or anything else under that name
        if isinstance(exc, MemoryError):
            raise
        raise BundleError(f"{path}: {_weights_problem(path, exc)}") from None
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)})")
        if unexpected:
            parts.append(f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)})")
        if shapes:
            parts.append(f"shape mismatch {shapes[:8]} ({len(shapes)})")
        raise BundleError(f"{path}: tensors do not match the configuration in model.json: " + "; ".join(parts))
    net.load_state_dict(state)
    return net


@dataclass
class Bundle:
    """A loaded bundle: metadata, preset, schedule and networks (on ``device``, in eval mode)."""

    path: Path
    meta: BundleMeta
    networks: dict[str, nn.Module]
    digest: str

    @property
    def preset(self) -> OrganPreset:
        return self.meta.preset()

    def schedule(self):
        from DiffusionAnomalyLib.models.diffusion.schedule import NoiseSchedule

        return NoiseSchedule(**self.meta.schedule)


def load_bundle(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
    manifest: str | os.PathLike | None = None, parts: tuple[str, ...] | None = None,
) -> Bundle:
    """Load a bundle folder or .zip: validate model.json, checksums (and the manifest), build and load nets."""
    p = Path(path)
    if not p.exists():
        raise BundleError(f"{p}: model bundle not found")
    if p.is_file() and p.suffix == ".zip":
        tmp = Path(tempfile.mkdtemp(prefix="da-bundle-"))
        try:  # the weights are read into memory: the extracted copy never outlives the call
            bundle = _load_folder(_extract_zip(p, tmp), device, dtype, manifest, parts)
        except BundleError as exc:  # name the user's archive, not the temporary copy
            raise BundleError(str(exc).replace(str(tmp), f"{p} (in the archive)")) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        bundle.path = p
        return bundle
    return _load_folder(p, device, dtype, manifest, parts)


def _load_folder(p: Path, device, dtype, manifest, parts) -> Bundle:
    meta = read_meta(p)
    verify_files(p, meta)
    verify_manifest(p, meta, manifest)
    networks = {}
    for name in parts or DETECTION_PARTS:
        f = p / f"{name}.safetensors"
        if meta.networks.get(name) is None:
            continue
        if not f.is_file():
            raise BundleError(f"{p}: model.json configures a {name} but {f.name} is missing")
        try:
            net = load_weights(_build(name, meta), f)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{p / 'model.json'}: the {name} configuration is invalid ({type(exc).__name__}: "
                              f"{exc})") from None
        networks[name] = net.to(device=device, dtype=dtype or _float32()).eval()
    return Bundle(p, meta, networks, bundle_digest(p))


def _float32():
    import torch

    return torch.float32


def _extract_zip(zpath: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(zpath) as z:
            root = dest.resolve()
            for info in z.infolist():
                target = (dest / info.filename).resolve()
                if target != root and root not in target.parents:
                    raise BundleError(f"{zpath}: unsafe path {info.filename!r} in the archive")
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise BundleError(f"{zpath}: the archive holds a symbolic link {info.filename!r}; refused")
            z.extractall(dest)
    except zipfile.BadZipFile:
        raise BundleError(f"{zpath}: not a valid zip file") from None
    found = [m.parent for m in dest.rglob("model.json")]
    if len(found) != 1:
        raise BundleError(f"{zpath}: expected exactly one model.json in the archive, found {len(found)}")
    return found[0]


def import_bundle(source: str | os.PathLike, models_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Copy a bundle (folder or .zip) into ``models_dir/<name>-<version>`` after validating it (``model.json``, its
    name and version as one folder name each, every weight file's checksum).

    An installed bundle of the same name and version raises :class:`~DiffusionAnomalyLib.errors.BundleExistsError`
    unless ``overwrite`` (then it is replaced as a whole); a folder of that name that is not a bundle is never
    replaced (:class:`~DiffusionAnomalyLib.errors.OutputError`).
    """
    src = Path(source)
    if not src.exists():
        raise BundleError(f"{src}: model bundle not found")
    tmp = Path(tempfile.mkdtemp(prefix="da-import-"))
    try:
        try:
            folder = _extract_zip(src, tmp) if src.suffix == ".zip" else src
            meta = read_meta(folder)
            verify_files(folder, meta)
        except BundleError as exc:  # name the user's archive, not the temporary copy
            raise BundleError(str(exc).replace(str(tmp), f"{src} (in the archive)")) from None
        dest = Path(models_dir) / f"{meta.name}-{meta.version}"
        if dest.resolve() == src.resolve():
            raise BundleError(f"{src}: this bundle is already installed there")
        if dest.exists() and not overwrite and any(dest.iterdir()):
            check_output_dir(dest, option="the models folder", overwrite=True, command="import-bundle")
            exists = BundleExistsError(f"{dest}: a bundle {meta.name} {meta.version} is already installed; pass "
                                       "--overwrite (import-bundle) to replace it")
            exists.installed = dest  # for a front end that asks instead (the Slicer panel)
            raise exists
        check_output_dir(dest, [src], option="the models folder", overwrite=True, command="import-bundle")
        with atomic_output_dir(dest, replace_previous=True) as stage:
            for f in folder.iterdir():
                if f.is_file():
                    shutil.copy2(f, stage / f.name)
        _remove_stale(dest, {f.name for f in folder.iterdir() if f.is_file()})
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale(dest: Path, keep: set[str]) -> None:
    """After a bundle replaced an earlier one in ``dest``: remove the earlier one's files the new one lacks."""
    for f in dest.iterdir():
        if f.is_file() and f.name not in keep:
            f.unlink()


def default_models_dir() -> Path:
    """The user's models folder: ``$DA_MODELS_DIR``, else ``~/.diffusion-anomaly/models``."""
    env = os.environ.get("DA_MODELS_DIR")
    return Path(env) if env else Path.home() / ".diffusion-anomaly" / "models"


@dataclass
class AvailableBundle:
    """A bundle found on disk (metadata only; nothing loaded)."""

    path: Path
    meta: BundleMeta

    @property
    def label(self) -> str:
        demo = " [DEMO, synthetic data]" if self.meta.demo else ""
        return f"{self.meta.name} {self.meta.version}{demo}"

    @property
    def summary(self) -> str:
        """The model card's one-line summary (or, for older bundles, the intended use)."""
        return self.meta.summary or self.meta.intended_use


def bundle_folders() -> list[Path]:
    """Where installed bundles are looked for: the user's models folder, then the shipped ``Resources/Models``
    (when the resources are found: a source checkout, Slicer's ``DiffusionAnomalyResources`` or the wheel's)."""
    from DiffusionAnomalyLib.resources import resources_dir

    folders = [default_models_dir()]
    with contextlib.suppress(FileNotFoundError):
        folders.append(resources_dir() / "Models")
    return folders


def demo_bundle(organ: str) -> AvailableBundle:
    """The demo bundle ``demo`` runs for ``organ`` (the user's models folder first). Never a silent fallback: without
    one, :class:`~DiffusionAnomalyLib.errors.NoDemoBundleError` says that none is installed and where it looked."""
    found = [b for b in available_bundles(organ) if b.meta.demo]
    if found:
        return found[0]
    from DiffusionAnomalyLib.resources import resources_dir

    try:
        shipped = f"the shipped models folder {resources_dir() / 'Models'}"
    except FileNotFoundError as exc:
        shipped = f"the shipped models folder (no resources found: {exc})"
    raise NoDemoBundleError(
        f"no demo bundle for the {organ} is installed (looked in {default_models_dir()} and {shipped}). Reinstall "
        "diffusion-anomaly (its wheel ships the demo bundles), import one with `diffusion-anomaly import-bundle`, or "
        "pass --baseline to run the non-neural median baseline instead")


def available_bundles(organ: str | None = None,
                      folders: list[str | os.PathLike] | None = None) -> list[AvailableBundle]:
    """Bundles in the user's models folder and the shipped ``Resources/Models`` (:func:`bundle_folders`), for
    ``organ`` if given.

    Folders without a readable ``model.json`` are skipped; user bundles come first.
    """
    if folders is None:
        folders = bundle_folders()
    found = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for sub in sorted(folder.iterdir()):
            if not (sub / "model.json").is_file():
                continue
            try:
                meta = read_meta(sub)
            except (BundleError, ValueError, TypeError):
                continue
            if organ is None or meta.organ == organ:
                found.append(AvailableBundle(sub, meta))
    return found
