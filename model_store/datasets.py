"""Training data sets stored beside the models, keyed by the sha256 of their contents.

Layout: ``<root>/datasets/<sha256>/{data.npy, record.json}``. The id of a data set is the
sha256 of its canonical bytes (see :func:`array_sha256`), so a model manifest that records
that digest points to exactly the data that trained it, and uploading the same data twice
stores it once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import fsio
from .errors import CorruptDataset, DatasetNotFound, InvalidDataset
from .manifest import utc_now

__all__ = ["DatasetRecord", "DatasetStore", "array_sha256"]

_ID_RE = re.compile(r"[0-9a-f]{64}")
DATA_FILE = "data.npy"
RECORD_FILE = "record.json"
_MAX_LABEL = 200
_LOCK_FILE = ".lock"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


def array_sha256(array: np.ndarray) -> str:
    """sha256 of a 2-D array as float32, C order, little endian, prefixed by its shape.

    The shape prefix keeps (n, d) and (n * d / 2, 2) views of the same numbers apart.
    """
    canonical = np.ascontiguousarray(array, dtype="<f4")
    digest = hashlib.sha256(f"float32:{canonical.shape[0]}x{canonical.shape[1]}\n".encode())
    digest.update(canonical.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class DatasetRecord:
    """What the store knows about one data set (id == sha256).

    ``name`` is the latest name it was uploaded under and ``names`` every name it had (each
    addresses it: :meth:`DatasetStore.resolve`); ``uploaded_at`` is the latest upload's time;
    ``columns`` its column names (None in records written before they were kept: x1..xd);
    ``report`` the data checks' findings (model_store.data_checks), None in older records."""

    id: str
    name: str
    rows: int
    dim: int
    sha256: str
    created_at: str
    columns: list[str] | None = None
    names: list[str] = field(default_factory=list)
    uploaded_at: str | None = None
    report: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, for JSON responses."""
        return asdict(self)

    @property
    def column_names(self) -> list[str]:
        """The column names (x1..xd when the record has none)."""
        return list(self.columns) if self.columns else [f"x{j + 1}" for j in range(self.dim)]

    @property
    def all_names(self) -> list[str]:
        """Every name this data set was uploaded under, the latest last."""
        return [n for n in self.names if n != self.name] + [self.name]

    @property
    def last_upload(self) -> str:
        """When it was last uploaded (created_at for older records)."""
        return self.uploaded_at or self.created_at


def _upload_time() -> str:
    """Now, ISO 8601 to the microsecond: orders the uploads under one name."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _validate_array(array: object) -> np.ndarray:
    try:
        values = np.asarray(array)
    except Exception as exc:  # noqa: BLE001 - numpy raises many kinds
        raise InvalidDataset(f"data set is not an array ({exc})") from None
    if values.ndim != 2:
        raise InvalidDataset(f"data set must be 2-D (rows, features), got shape {values.shape}")
    if values.shape[0] < 1 or values.shape[1] < 1:
        raise InvalidDataset(f"data set must have at least one row and one column: {values.shape}")
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise InvalidDataset(f"data set must be numeric, got dtype {values.dtype}")
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise InvalidDataset("data set contains NaN or infinite values (in float32)")
    return values


def _validate_label(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidDataset("data set name must be a non-empty string")
    if len(name) > _MAX_LABEL or not name.isprintable():
        raise InvalidDataset(
            f"data set name must be printable and at most {_MAX_LABEL} characters"
        )
    return name


def parse_record(dataset_id: str, raw: bytes | None) -> DatasetRecord:
    """A data set's record from its JSON bytes (None: not stored)."""
    if raw is None:
        raise DatasetNotFound(f"data set {dataset_id!r} not found")
    try:
        return DatasetRecord(**json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise CorruptDataset(
            f"data set {dataset_id!r}: {RECORD_FILE} is damaged ({exc})"
        ) from None


class DatasetStore:
    """Content-addressed store of training arrays (float32, rows x dim)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _folder(self, dataset_id: str) -> Path:
        if not isinstance(dataset_id, str) or _ID_RE.fullmatch(dataset_id) is None:
            raise DatasetNotFound(f"data set {dataset_id!r} not found (ids are 64 hex digits)")
        return self.root / dataset_id

    def put(
        self,
        array: np.ndarray,
        name: str,
        *,
        columns: list[str] | None = None,
        report: dict[str, Any] | None = None,
    ) -> DatasetRecord:
        """Store ``array`` under its sha256 (atomically). An existing copy is reused, and
        its record takes this upload's name (the earlier names stay in ``names``), columns
        and report: an upload's name is never dropped."""
        values = _validate_array(array)
        label = _validate_label(name)
        if columns is not None and len(columns) != values.shape[1]:
            raise InvalidDataset(f"{len(columns)} column names for {values.shape[1]} columns")
        digest = array_sha256(values)
        folder = self.root / digest
        if (folder / RECORD_FILE).exists():
            return self._renamed(digest, label, columns, report)
        now = _upload_time()
        record = DatasetRecord(
            id=digest,
            name=label,
            rows=int(values.shape[0]),
            dim=int(values.shape[1]),
            sha256=digest,
            created_at=utc_now(),
            columns=columns,
            names=[label],
            uploaded_at=now,
            report=report,
        )
        buffer = io.BytesIO()
        np.save(buffer, values, allow_pickle=False)
        self.root.mkdir(parents=True, exist_ok=True)
        with fsio.locked(self.root / _LOCK_FILE):
            self._cleanup_locked()
            tmp = self.root / f"{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
            os.mkdir(tmp)
            tmp_fd = fsio.try_lock_dir(tmp)  # owner mark, dropped by the kernel if we die
        try:
            fsio.write_durable(tmp / DATA_FILE, buffer.getvalue())
            fsio.write_durable(tmp / RECORD_FILE, json.dumps(record.to_dict()).encode())
            fsio.fsync_dir(tmp)
            try:
                os.rename(tmp, folder)
            except OSError:
                # Someone stored the same content first: theirs is identical by construction.
                if (folder / RECORD_FILE).exists():
                    return self._renamed(digest, label, columns, report)
                raise
            fsio.fsync_dir(self.root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if tmp_fd is not None:
                os.close(tmp_fd)
        return record

    def _renamed(
        self,
        digest: str,
        name: str,
        columns: list[str] | None,
        report: dict[str, Any] | None,
    ) -> DatasetRecord:
        """The stored record, updated by a new upload of the same content (under the lock)."""
        with fsio.locked(self.root / _LOCK_FILE):
            old = self.get(digest)
            names = [n for n in old.all_names if n != name] + [name]
            record = replace(
                old, name=name, names=names, uploaded_at=_upload_time(),
                columns=columns if columns is not None else old.columns,
                report=report if report is not None else old.report,
            )  # fmt: skip
            raw = json.dumps(record.to_dict()).encode()
            fsio.replace_durable(self._folder(digest) / RECORD_FILE, raw)
        return record

    def resolve(self, ref: str, visible: Callable[[str], bool] | None = None) -> DatasetRecord:
        """The data set ``ref`` names: its id, else the latest upload under that name (among
        those ``visible`` says the caller may see); DatasetNotFound otherwise."""
        if isinstance(ref, str) and _ID_RE.fullmatch(ref):
            if visible is None or visible(ref):
                return self.get(ref)
            raise DatasetNotFound(f"data set {ref!r} not found")
        named = [
            r for r in self.list()
            if ref in r.all_names and (visible is None or visible(r.id))
        ]  # fmt: skip
        if not named:
            raise DatasetNotFound(f"data set {ref!r} not found (neither an id nor a name)")
        # The latest upload under that name: a data set uploaded later under another name
        # gave this one up, unless no data set holds it as its current name.
        return max(named, key=lambda r: (r.name == ref, r.last_upload))

    def _cleanup_locked(self) -> list[str]:
        """Remove temp folders of dead writers and leftover trash; caller holds the lock."""
        removed = []
        for entry in sorted(os.listdir(self.root)):
            path = self.root / entry
            if entry.startswith(_TRASH_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(entry)
            elif entry.startswith(_TMP_PREFIX) and path.is_dir():
                fd = fsio.try_lock_dir(path)
                if fd is None:
                    continue  # its writer is alive
                try:
                    shutil.rmtree(path, ignore_errors=True)
                finally:
                    os.close(fd)
                removed.append(entry)
        return removed

    def cleanup(self) -> list[str]:
        """Remove what dead writers left behind; return the removed entries."""
        if not self.root.is_dir():
            return []
        with fsio.locked(self.root / _LOCK_FILE):
            return self._cleanup_locked()

    def get(self, dataset_id: str) -> DatasetRecord:
        """The record of a stored data set."""
        try:
            raw = (self._folder(dataset_id) / RECORD_FILE).read_bytes()
        except FileNotFoundError:
            raw = None
        return parse_record(dataset_id, raw)

    def list(self) -> list[DatasetRecord]:
        """All stored data sets, oldest first."""
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return []
        records = []
        for entry in entries:
            if _ID_RE.fullmatch(entry):
                try:
                    records.append(self.get(entry))
                except (DatasetNotFound, CorruptDataset):
                    continue
        return sorted(records, key=lambda r: (r.created_at, r.id))

    def load(self, dataset_id: str) -> np.ndarray:
        """The stored array (float32), after checking that it still matches its sha256."""
        self.get(dataset_id)
        path = self._folder(dataset_id) / DATA_FILE
        try:
            values = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DatasetNotFound(f"data set {dataset_id!r}: {DATA_FILE} is missing") from None
        except ValueError as exc:
            raise CorruptDataset(
                f"data set {dataset_id!r}: {DATA_FILE} is damaged ({exc})"
            ) from None
        if values.ndim != 2 or array_sha256(values) != dataset_id:
            raise CorruptDataset(
                f"data set {dataset_id!r}: {DATA_FILE} does not match its sha256; upload it again"
            )
        return values

    def path(self, dataset_id: str) -> Path:
        """Path of the stored .npy file (for tools that read it directly)."""
        self.get(dataset_id)
        return self._folder(dataset_id) / DATA_FILE

    def delete(self, dataset_id: str) -> None:
        """Remove a data set (models that name it keep their recorded sha256)."""
        folder = self._folder(dataset_id)
        if not folder.is_dir():
            raise DatasetNotFound(f"data set {dataset_id!r} not found")
        with fsio.locked(self.root / _LOCK_FILE):
            trash = self.root / f"{_TRASH_PREFIX}{uuid.uuid4().hex}"
            try:
                os.rename(folder, trash)
            except FileNotFoundError:
                raise DatasetNotFound(f"data set {dataset_id!r} not found") from None
            fsio.fsync_dir(self.root)
            shutil.rmtree(trash, ignore_errors=True)
