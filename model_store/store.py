"""ModelStore: versioned, verifiable, pickle-free checkpoints with atomic publish.

Layout under the root (CPFLOW_STORE_DIR)::

    <name>/<version>/manifest.json        JSON: config, standardisation, training summary, digests
    <name>/<version>/manifest.sha256     sha256 of manifest.json
    <name>/<version>/weights.safetensors flow.state_dict()
    <name>/<version>/model.onnx          optional: forward transport x -> z
    <name>/<version>/log_prob.onnx       optional: exact log p(x), small dimensions only
    <name>/<version>/plots/<file>        optional
    <name>/.lock                         flock taken to allocate versions and clean up
    <name>/.last_version                 highest version ever published (never reused)
    <name>/.tmp-*                        a publish in progress (or a dead one, removed later)
    datasets/<sha256>/                   uploaded training data (see datasets.py)

A version folder appears by one ``rename`` of a fully written, fsynced temporary folder, so a
reader sees a version completely or not at all.

A version published for a tenant (``publish(..., tenant=...)``: a training job of a service
with CPFLOW_MODEL_SCOPE=tenant) names it in its manifest's ``tenant`` field; versions without
one (the CLI, older versions) are shared. A name has one owner: :meth:`ModelStore.owner`, and a
publish for another owner raises :class:`ModelNameTaken`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import fsio
from .datasets import DatasetStore
from .errors import (
    CorruptModel,
    InvalidName,
    ModelNameTaken,
    ModelNotFound,
    PlotNotFound,
    StoreError,
)
from .manifest import (
    FORMAT_VERSION,
    MANIFEST_DIGEST_FILE,
    MANIFEST_FILE,
    ONNX_FILE,
    ONNX_LOG_PROB_FILE,
    PLOTS_DIR,
    WEIGHTS_FILE,
    check_manifest,
    dump_manifest,
    json_safe,
    utc_now,
)
from .names import RESERVED_NAMES, did_you_mean, validate_filename, validate_name

if TYPE_CHECKING:
    import torch

    from cpflow import CPFlow

__all__ = ["LoadedModel", "ModelStore", "PublishedVersion"]

log = logging.getLogger(__name__)

_LOCK_FILE = ".lock"
_COUNTER_FILE = ".last_version"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_EXPORT_FILES = frozenset({ONNX_FILE, ONNX_LOG_PROB_FILE})  # optional: torch can answer without


@dataclass(frozen=True)
class PublishedVersion:
    """What publish() wrote: the new version number, its folder and its manifest."""

    name: str
    version: int
    path: Path
    manifest: dict[str, Any]


@dataclass
class LoadedModel:
    """A verified model rebuilt from the store, in eval mode on the requested device."""

    name: str
    version: int
    flow: CPFlow
    manifest: dict[str, Any]
    onnx_path: Path | None = None
    onnx_sha256: str | None = field(default=None, repr=False)
    onnx_log_prob_path: Path | None = None
    onnx_log_prob_sha256: str | None = field(default=None, repr=False)


def _parse_version(text: str) -> int | None:
    """A version folder name is a positive decimal integer without leading zeros."""
    if text.isascii() and text.isdigit() and not text.startswith("0"):
        return int(text)
    return None


class ModelStore:
    """Models stored as ``<root>/<name>/<version>/`` folders; see the module docstring."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.datasets = DatasetStore(self.root / "datasets")

    # ------------------------------------------------------------------ reading

    def _name_dir(self, name: str) -> Path:
        return self.root / validate_name(name)

    def versions(self, name: str) -> list[int]:
        """Published versions of ``name``, ascending; [] if the name has none."""
        name_dir = self._name_dir(name)
        try:
            entries = os.listdir(name_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for entry in entries:
            version = _parse_version(entry)
            if version is not None and (name_dir / entry).is_dir():
                found.append(version)
        return sorted(found)

    def names(self) -> list[str]:
        """Model names that have at least one version, sorted."""
        try:
            entries = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            if entry in RESERVED_NAMES:
                continue
            try:
                validate_name(entry)
            except InvalidName:
                continue
            if self.versions(entry):
                out.append(entry)
        return out

    def resolve(self, name: str, version: int | str = "latest") -> int:
        """Turn ``version`` (an int, a decimal string or "latest") into a published version."""
        available = self.versions(name)
        if version == "latest":
            if not available:
                raise ModelNotFound(name, detail=self.unknown_model_detail(name))
            return available[-1]
        if isinstance(version, str):
            parsed = _parse_version(version)
            if parsed is None:
                raise ModelNotFound(name, version, "versions are positive integers or 'latest'")
            version = parsed
        if isinstance(version, bool) or not isinstance(version, int):
            raise ModelNotFound(name, version, "versions are positive integers or 'latest'")
        if version not in available:
            raise ModelNotFound(name, version)
        return version

    def unknown_model_detail(self, name: str) -> str:
        """Why ``name`` has no version: a store folder that does not exist, or a likely typo."""
        if not self._root_exists():
            return (
                f"the store folder {self.root.resolve()} does not exist (a relative path is "
                f"taken from the current folder, {Path.cwd()}); give the folder that "
                "cpflow-train printed when it published, or set CPFLOW_STORE_DIR"
            )
        return "it has no published version" + did_you_mean(name, self.names())

    def _root_exists(self) -> bool:
        return self.root.is_dir()

    def version_path(self, name: str, version: int | str = "latest") -> Path:
        """Folder of a published version."""
        return self._folder(name, self.resolve(name, version))

    def _folder(self, name: str, number: int) -> Path:
        """The local folder holding version ``number`` (a backend may fetch it first)."""
        return self._name_dir(name) / str(number)

    def _read_manifest(self, name: str, version: int, folder: Path) -> dict[str, Any]:
        """Read manifest.json, check it against manifest.sha256 and its structure."""
        try:
            expected = (folder / MANIFEST_DIGEST_FILE).read_text()
        except FileNotFoundError:
            expected = None
        try:
            raw = (folder / MANIFEST_FILE).read_bytes()
        except FileNotFoundError:
            raw = None
        return parse_manifest(name, version, raw, expected)

    def manifest(self, name: str, version: int | str = "latest") -> dict[str, Any]:
        """The verified manifest of a version (file digests are checked by load())."""
        number = self.resolve(name, version)
        return self._read_manifest(name, number, self._folder(name, number))

    def owner(self, name: str) -> str | None:
        """The tenant whose versions ``name`` holds (its newest readable manifest's
        ``tenant``); None for a shared model, or one none of whose manifests can be read.
        ModelNotFound when it has no version."""
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(name, detail="it has no published version")
        for number in reversed(versions):
            try:
                tenant = self.manifest(name, number).get("tenant")
            except (CorruptModel, ModelNotFound):
                continue
            return tenant if isinstance(tenant, str) else None
        return None

    def _check_owner(self, name: str, tenant: str | None) -> None:
        """ModelNameTaken unless ``name`` is new or already ``tenant``'s (None: shared)."""
        try:
            if self.owner(name) != tenant:
                raise ModelNameTaken(name)
        except ModelNotFound:
            return

    def list_models(self) -> list[dict[str, Any]]:
        """One summary per model, for its latest version: name, version, dim, created_at, metrics.

        A model whose latest manifest is damaged is left out (and logged), so one bad model
        never hides the others.
        """
        out = []
        for name in self.names():
            try:
                manifest = self.manifest(name, "latest")
            except (CorruptModel, ModelNotFound) as exc:
                log.warning("model store: skipping %s: %s", name, exc)
                continue
            out.append(
                {
                    "name": name,
                    "version": manifest["version"],
                    "dim": manifest["dim"],
                    "created_at": manifest["created_at"],
                    "metrics": manifest["training"].get("metrics") or {},
                }
            )
        return out

    def _verified_files(
        self,
        name: str,
        version: int,
        folder: Path,
        manifest: dict[str, Any],
        skip: frozenset[str] = frozenset(),
    ) -> dict[str, bytes | None]:
        """Check every listed file's sha256, and that nothing unlisted lies in the folder.

        Returns the weights' bytes (read once, so what is hashed is what is parsed); other
        files are hashed while streaming and mapped to None. Files named in ``skip`` are
        neither checked nor returned, listed or not.
        """
        listed: dict[str, str] = manifest["files"]
        contents: dict[str, bytes | None] = {}
        for filename in sorted(set(listed) - skip):
            path = _member_path(name, version, folder, filename)
            try:
                if filename == WEIGHTS_FILE:
                    data = path.read_bytes()
                    digest = fsio.sha256_bytes(data)
                else:
                    data = None
                    digest = fsio.sha256_file(path)
            except FileNotFoundError:
                raise CorruptModel(name, version, filename, "is missing") from None
            except IsADirectoryError:
                raise CorruptModel(name, version, filename, "is a folder, not a file") from None
            if digest != listed[filename]:
                raise CorruptModel(
                    name, version, filename, "does not match its sha256 (altered or truncated)"
                )
            contents[filename] = data
        known = set(listed) | skip | {MANIFEST_FILE, MANIFEST_DIGEST_FILE}
        for dirpath, _dirs, files in os.walk(folder):
            for filename in files:
                rel = Path(dirpath, filename).relative_to(folder).as_posix()
                if rel not in known:
                    raise CorruptModel(name, version, rel, "is not listed in the manifest")
        return contents

    def verify(self, name: str, version: int | str = "latest") -> dict[str, Any]:
        """Check the manifest and every file digest of a version; return the manifest."""
        number = self.resolve(name, version)
        folder = self._folder(name, number)
        manifest = self._read_manifest(name, number, folder)
        self._verified_files(name, number, folder, manifest)
        return manifest

    def load(
        self,
        name: str,
        version: int | str = "latest",
        device: str | torch.device = "cpu",
        *,
        exports: bool = True,
    ) -> LoadedModel:
        """Verify every digest, then rebuild the flow from its FlowConfig and weights.

        Never unpickles: weights are safetensors, everything else is JSON. ``exports=False``
        ignores the ONNX files (not verified, not returned): a server whose export is damaged
        still serves the verified weights with torch.
        """
        number = self.resolve(name, version)
        from safetensors.torch import load as load_safetensors

        from cpflow import CPFlow, FlowConfig

        folder = self._folder(name, number)
        manifest = self._read_manifest(name, number, folder)
        skip = frozenset() if exports else _EXPORT_FILES
        contents = self._verified_files(name, number, folder, manifest, skip)
        try:
            config = FlowConfig.model_validate(manifest["flow_config"])
        except ValueError as exc:
            raise CorruptModel(
                name, number, MANIFEST_FILE, f"holds an invalid flow_config ({exc})"
            ) from None
        weights = contents.get(WEIGHTS_FILE)
        if weights is None:
            raise CorruptModel(name, number, WEIGHTS_FILE, "is not listed in the manifest")
        try:
            state = load_safetensors(weights)
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise CorruptModel(
                name, number, WEIGHTS_FILE, f"cannot be parsed as safetensors ({exc})"
            ) from None
        flow = CPFlow(config)
        try:
            flow.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CorruptModel(
                name, number, WEIGHTS_FILE, f"does not fit the manifest's flow_config ({exc})"
            ) from None
        flow.to(device)
        flow.eval()
        files = manifest["files"] if exports else {}
        return LoadedModel(
            name=name,
            version=number,
            flow=flow,
            manifest=manifest,
            onnx_path=folder / ONNX_FILE if ONNX_FILE in files else None,
            onnx_sha256=files.get(ONNX_FILE),
            onnx_log_prob_path=folder / ONNX_LOG_PROB_FILE
            if ONNX_LOG_PROB_FILE in files
            else None,
            onnx_log_prob_sha256=files.get(ONNX_LOG_PROB_FILE),
        )

    def plot_path(self, name: str, version: int | str, filename: str) -> Path:
        """Path of a stored plot; ModelNotFound if the version has no such plot."""
        validate_filename(filename)
        number = self.resolve(name, version)
        folder = self._folder(name, number)
        manifest = self._read_manifest(name, number, folder)
        plots = [str(p) for p in manifest["plots"]]
        if filename not in plots:
            raise PlotNotFound(name, number, filename, plots, did_you_mean(filename, plots))
        return folder / PLOTS_DIR / filename

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _name_lock(self, name_dir: Path) -> Iterator[None]:
        with fsio.locked(name_dir / _LOCK_FILE):
            yield

    def _cleanup_locked(self, name_dir: Path) -> list[str]:
        """Remove dead temp folders and leftover trash; the caller holds the name lock.

        A live publisher holds a flock on its temp folder, so a folder whose lock we can take
        belongs to a process that died (the kernel released its lock).
        """
        removed = []
        for entry in sorted(os.listdir(name_dir)):
            path = name_dir / entry
            if entry.startswith(_TRASH_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(entry)
            elif entry.startswith(_TMP_PREFIX) and path.is_dir():
                fd = fsio.try_lock_dir(path)
                if fd is None:
                    continue  # a publisher is alive and writing
                try:
                    shutil.rmtree(path, ignore_errors=True)
                finally:
                    os.close(fd)
                removed.append(entry)
        return removed

    def cleanup(self, name: str | None = None) -> list[str]:
        """Remove temp folders of dead publishers (all names and the data set area, or one
        name); return what went."""
        names = [validate_name(name)] if name is not None else None
        if names is None:
            try:
                names = [e for e in sorted(os.listdir(self.root)) if _is_model_dir(self.root, e)]
            except FileNotFoundError:
                return []
        removed = [] if name is not None else [f"datasets/{e}" for e in self.datasets.cleanup()]
        for each in names:
            name_dir = self.root / each
            if not name_dir.is_dir():
                continue
            with self._name_lock(name_dir):
                removed += [f"{each}/{entry}" for entry in self._cleanup_locked(name_dir)]
        return removed

    def _allocate_locked(self, name_dir: Path) -> int:
        """Next version: above every existing folder and every version ever published."""
        try:
            last = int((name_dir / _COUNTER_FILE).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            last = 0
        existing = [v for e in os.listdir(name_dir) if (v := _parse_version(e)) is not None]
        return max([last, *existing]) + 1

    def _payload(
        self,
        name: str,
        flow: CPFlow,
        training: dict[str, Any] | None,
        plots: dict[str, bytes] | None,
        export_onnx: bool,
    ) -> tuple[dict[str, bytes], dict[str, Any]]:
        """The files of a new version (path in the version -> bytes) and its manifest without
        ``version`` and ``created_at`` (a backend adds them once it has the number)."""
        import cpflow

        validate_name(name)
        plots = dict(plots or {})
        for filename, data in plots.items():
            validate_filename(filename)
            if not isinstance(data, bytes | bytearray | memoryview):
                raise StoreError(f"plot {filename!r} must be bytes, got {type(data).__name__}")
        try:
            training_summary = json_safe(dict(training or {}))
        except TypeError as exc:
            raise StoreError(f"training summary for {name!r}: {exc}") from None
        training_summary.setdefault(
            "parameter_count", int(sum(p.numel() for p in flow.parameters()))
        )
        weights, config_json = _serialise_weights(flow)
        files = {WEIGHTS_FILE: weights}
        files.update({f"{PLOTS_DIR}/{f}": bytes(data) for f, data in sorted(plots.items())})
        onnx_info: dict[str, Any] = {"exported": False}
        if export_onnx:
            from . import onnx_export

            exported = onnx_export.export_forward_transport(flow)
            onnx_info = exported.info
            if exported.data is not None:
                files[ONNX_FILE] = exported.data
            density = onnx_export.export_log_prob(flow)
            onnx_info["log_prob"] = density.info
            if density.data is not None:
                files[ONNX_LOG_PROB_FILE] = density.data
        base = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "library_version": cpflow.__version__,
            "flow_config": config_json,
            "dim": int(flow.dim),
            "standardization": _standardization(flow),
            "training": training_summary,
            "files": {path: fsio.sha256_bytes(data) for path, data in files.items()},
            "plots": sorted(plots),
            "onnx": onnx_info,
        }
        return files, base

    def publish(
        self,
        name: str,
        flow: CPFlow,
        *,
        training: dict[str, Any] | None = None,
        plots: dict[str, bytes] | None = None,
        export_onnx: bool = False,
        tenant: str | None = None,
    ) -> PublishedVersion:
        """Write ``flow`` as the next version of ``name``, atomically (see :meth:`_commit`);
        ``tenant``: the version is that tenant's (ModelNameTaken if the name is another
        owner's), None: shared."""
        files, base = self._payload(name, flow, training, plots, export_onnx)
        if tenant is not None:
            base["tenant"] = tenant
        return self._commit(name, files, base)

    def _commit(
        self, name: str, files: dict[str, bytes], base: dict[str, Any]
    ) -> PublishedVersion:
        """Files go to a temp folder beside the target (each fsynced), then, under the name's
        lock, the version is allocated, the manifest written, and the folder renamed into place.
        """
        name_dir = self.root / name
        if not name_dir.is_dir():
            name_dir.mkdir(parents=True, exist_ok=True)
            fsio.fsync_dir(self.root)
        with self._name_lock(name_dir):
            self._check_owner(name, base.get("tenant"))
            self._cleanup_locked(name_dir)
            tmp = name_dir / f"{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
            os.mkdir(tmp)
            # Owner mark: held until we return; released by the kernel if we die.
            tmp_fd = fsio.try_lock_dir(tmp)
        if tmp_fd is None:  # pragma: no cover - only if someone else locks our fresh folder
            raise StoreError(f"could not lock temp folder {tmp}")
        try:
            for path, data in files.items():
                if "/" in path:
                    (tmp / path).parent.mkdir(exist_ok=True)
                _write_file(tmp / path, data)
            if base["plots"]:
                fsio.fsync_dir(tmp / PLOTS_DIR)
            with self._name_lock(name_dir):
                version = self._allocate_locked(name_dir)
                manifest = {**base, "version": version, "created_at": utc_now()}
                raw = dump_manifest(manifest)
                _write_file(tmp / MANIFEST_FILE, raw)
                _write_file(tmp / MANIFEST_DIGEST_FILE, (fsio.sha256_bytes(raw) + "\n").encode())
                fsio.fsync_dir(tmp)
                target = name_dir / str(version)
                os.rename(tmp, target)  # the one step that makes the version visible
                fsio.fsync_dir(name_dir)
                fsio.replace_durable(name_dir / _COUNTER_FILE, f"{version}\n".encode())
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(tmp_fd)
        return PublishedVersion(name=name, version=version, path=target, manifest=manifest)

    def delete_model(self, name: str) -> list[int]:
        """Remove every version of ``name``, oldest first (so an interruption leaves the
        newest ones, never an older version as latest); return the numbers removed."""
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(name, detail="it has no published version")
        for number in versions:
            self.delete(name, number)
        return versions

    def delete(self, name: str, version: int | str) -> None:
        """Remove one version; its number is never reused by a later publish."""
        number = self.resolve(name, version)
        name_dir = self._name_dir(name)
        with self._name_lock(name_dir):
            target = name_dir / str(number)
            if not target.is_dir():
                raise ModelNotFound(name, number)
            trash = name_dir / f"{_TRASH_PREFIX}{number}-{uuid.uuid4().hex}"
            os.rename(target, trash)
            fsio.fsync_dir(name_dir)
            shutil.rmtree(trash, ignore_errors=True)


def parse_manifest(name: str, version: int, raw: bytes | None, digest: str | None) -> dict:
    """A version's manifest from its bytes and its digest file's text (None: missing),
    checked against the digest and for structure; CorruptModel names what is wrong."""
    if digest is None:
        raise CorruptModel(name, version, MANIFEST_DIGEST_FILE, "is missing")
    if raw is None:
        raise CorruptModel(name, version, MANIFEST_FILE, "is missing")
    if fsio.sha256_bytes(raw) != digest.strip():
        raise CorruptModel(
            name, version, MANIFEST_FILE, "does not match its sha256 (edited or truncated)"
        )
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise CorruptModel(name, version, MANIFEST_FILE, f"is not valid JSON ({exc})") from None
    problem = check_manifest(manifest, name, version)
    if problem:
        raise CorruptModel(name, version, MANIFEST_FILE, problem)
    return manifest


def _write_file(path: Path, data: bytes) -> None:
    """Durable write of one file of a version (module-level so tests can slow it down)."""
    fsio.write_durable(path, data)


def _is_model_dir(root: Path, entry: str) -> bool:
    if entry in RESERVED_NAMES:
        return False
    try:
        validate_name(entry)
    except InvalidName:
        return False
    return (root / entry).is_dir()


def _member_path(name: str, version: int, folder: Path, filename: str) -> Path:
    """Resolve a manifest file entry ('weights.safetensors', 'plots/a.png') safely."""
    parts = filename.split("/")
    try:
        for part in parts:
            validate_filename(part)
    except InvalidName as exc:
        raise CorruptModel(name, version, MANIFEST_FILE, f"lists an unsafe path ({exc})") from None
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != PLOTS_DIR):
        raise CorruptModel(name, version, MANIFEST_FILE, f"lists an unexpected path {filename!r}")
    return folder.joinpath(*parts)


def _serialise_weights(flow: CPFlow) -> tuple[bytes, dict[str, Any]]:
    """safetensors bytes of flow.state_dict() (contiguous CPU copies) and the config as JSON."""
    from safetensors.torch import save as save_safetensors

    config_json = flow.config.model_dump(mode="json")
    state = {
        key: tensor.detach().to("cpu", copy=True).contiguous()
        for key, tensor in flow.state_dict().items()
    }
    metadata = {
        "format": "pt",
        "cpflow_format_version": str(FORMAT_VERSION),
        "flow_config": json.dumps(config_json, sort_keys=True),
    }
    return save_safetensors(state, metadata=metadata), config_json


def _standardization(flow: CPFlow) -> dict[str, Any] | None:
    """The fixed input standardisation (kind, mean, std) as lists, or None if the flow has none.

    Informative only: the same values are buffers in the weights, which is what load() uses.
    """
    module = getattr(flow, "standardization", None)
    mean = getattr(module, "mean", None)
    std = getattr(module, "std", None)
    import torch  # lazily, so that name/manifest code does not need torch

    if not isinstance(mean, torch.Tensor) or not isinstance(std, torch.Tensor):
        return None
    return {
        "kind": getattr(flow.config, "standardization", None),
        "mean": [float(v) for v in mean.detach().cpu().reshape(-1).tolist()],
        "std": [float(v) for v in std.detach().cpu().reshape(-1).tolist()],
    }
