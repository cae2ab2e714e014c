"""ObjectModelStore: the model store on S3-compatible object storage (S3, MinIO, R2, GCS's S3
API...), shared by API replicas and training workers on many machines.

Object storage has no rename and no flock, so a version is published in three steps and
becomes visible at the last one:

1. a version number is claimed with a conditional write: ``<name>/claims/<v>`` is put with
   ``If-None-Match: *``; the store answers 412 to every publisher but the first, so two
   publishers never get the same number (the next try takes v + 1). Claims are never deleted,
   so a number is never reused, even after its version is deleted;
2. the version's files go to ``<name>/<v>/...``, the manifest (which lists every file's
   sha256) and its digest last;
3. the commit marker ``<name>/committed/<v>`` is written. Readers list only the markers, so
   they see a version completely or not at all; a publisher killed before step 3 leaves a
   claim and some files that :meth:`cleanup` removes once they are older than a grace period.

Readers materialise a committed version into a local cache folder in the local store's layout
(every file digest-checked on the way, then checked again by the reading code the local store
shares), so requests read local files, never object storage. Deleting a version removes its
marker first: replicas that cached it keep serving their copy.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from . import fsio
from .backend import StoreBackend
from .datasets import DATA_FILE, RECORD_FILE, DatasetRecord, DatasetStore, parse_record
from .errors import CorruptDataset, CorruptModel, DatasetNotFound, InvalidName, StoreError
from .manifest import MANIFEST_DIGEST_FILE, MANIFEST_FILE, dump_manifest, utc_now
from .names import RESERVED_NAMES, validate_name
from .store import ModelStore, PublishedVersion, _member_path, _parse_version, parse_manifest

__all__ = [
    "DEFAULT_CACHE_DIR",
    "ObjectDatasetStore",
    "ObjectModelStore",
    "S3Bucket",
    "StoreUnavailable",
    "open_store",
]

log = logging.getLogger(__name__)


class StoreUnavailable(StoreError):
    """The object store could not be reached (the service answers 503)."""


DEFAULT_CACHE_DIR = Path("./var/cache")
"""Where an s3:// store keeps its local copies when the caller's settings name no folder
(the service's CPFLOW_CACHE_DIR defaults to it)."""


def open_store(
    url: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    cache_max_bytes: int | None = None,
) -> StoreBackend:
    """A store from a URL: ``s3://bucket/prefix`` (endpoint, region and credentials from the
    usual AWS variables, e.g. AWS_ENDPOINT_URL) or a local folder (a path or ``file://``).

    ``cache_dir`` (an s3:// store's local copies) comes from the caller's settings; unset:
    :data:`DEFAULT_CACHE_DIR`.
    """
    text = os.fspath(url)
    if text.startswith("s3://"):
        parsed = urlparse(text)
        cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
        return ObjectModelStore(
            parsed.netloc, parsed.path.strip("/"), cache, cache_max_bytes=cache_max_bytes
        )
    return ModelStore(text.removeprefix("file://"))


class S3Bucket:
    """A bucket and key prefix on an S3-compatible service, with the few calls the stores make;
    an unreachable service is :class:`StoreUnavailable`."""

    def __init__(self, bucket: str, prefix: str, client: Any = None) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client("s3", config=Config(retries={"max_attempts": 3}))
        self.client = client

    def key(self, *parts: object) -> str:
        return "/".join([self.prefix, *map(str, parts)] if self.prefix else map(str, parts))

    def call(self, op: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, op)(Bucket=self.bucket, **kwargs)
        except ClientError:
            raise
        except BotoCoreError as exc:  # connection refused, timeouts, endpoint gone
            raise StoreUnavailable(f"object store s3://{self.bucket} unreachable: {exc}") from exc

    def list(self, prefix: str, delimiter: str | None = None) -> list[dict[str, Any]]:
        """Every object (or common prefix, with a delimiter) under ``prefix``."""
        out, token = [], None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if delimiter:
                kwargs["Delimiter"] = delimiter
            if token:
                kwargs["ContinuationToken"] = token
            page = self.call("list_objects_v2", **kwargs)
            out += page.get("CommonPrefixes", []) if delimiter else page.get("Contents", [])
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.call("get_object", Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        """Write an object; with ``if_absent`` only if none exists (False if one did)."""
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Key": key, "Body": data}
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        try:
            self.call("put_object", **kwargs)
        except ClientError as exc:
            if if_absent and exc.response["Error"]["Code"] in ("PreconditionFailed", "412"):
                return False
            raise
        return True

    def delete_prefix(self, prefix: str) -> None:
        for obj in self.list(prefix):
            self.call("delete_object", Key=obj["Key"])


class ObjectModelStore(ModelStore):
    """Models in ``s3://<bucket>/<prefix>/``, read through a local cache (module docstring)."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        cache_dir: str | os.PathLike[str],
        *,
        client: Any = None,
        cleanup_grace_s: float = 3600.0,
        cache_max_bytes: int | None = None,
    ) -> None:
        """``cache_max_bytes`` bounds the cached versions (least recently used go first; the
        flows a service holds in memory are not affected). None: unbounded."""
        super().__init__(cache_dir)
        self.objects = S3Bucket(bucket, prefix, client)
        self.cleanup_grace_s = cleanup_grace_s
        self.cache_max_bytes = cache_max_bytes
        self.datasets = ObjectDatasetStore(self.root / "datasets", self.objects, cleanup_grace_s)

    def _numbers(self, name: str, kind: str) -> list[int]:
        prefix = self.objects.key(name, kind) + "/"
        found = (_parse_version(o["Key"][len(prefix) :]) for o in self.objects.list(prefix))
        return sorted(v for v in found if v is not None)

    # ------------------------------------------------------------------ reading

    def _root_exists(self) -> bool:
        return True  # the bucket is asked instead; self.root is only the local cache

    def versions(self, name: str) -> list[int]:
        """Committed versions of ``name`` (their markers), ascending."""
        return self._numbers(validate_name(name), "committed")

    def names(self) -> list[str]:
        return sorted(name for name in self._all_names() if self.versions(name))

    def _folder(self, name: str, number: int) -> Path:
        """The cached copy of a committed version, fetched (digest-checked) on first use."""
        folder = self._name_dir(name) / str(number)
        if folder.is_dir():
            os.utime(folder)  # recently used
            return folder
        raw, digest = self._remote_manifest(name, number)
        manifest = parse_manifest(name, number, raw, digest)
        assert raw is not None and digest is not None  # parse_manifest refuses a missing one
        files = {Path(MANIFEST_FILE): raw, Path(MANIFEST_DIGEST_FILE): digest.encode()}
        for path, sha in manifest["files"].items():
            target = _member_path(name, number, Path(), path)  # refuses unsafe paths
            data = self.objects.get(self.objects.key(name, number, path))
            if data is None:
                raise CorruptModel(name, number, path, "is missing from the object store")
            if fsio.sha256_bytes(data) != sha:
                raise CorruptModel(
                    name, number, path, "does not match its sha256 (altered or truncated)"
                )
            files[target] = data
        _place(folder, files)
        self._trim_cache(keep=folder)
        return folder

    def _trim_cache(self, keep: Path) -> None:
        """Drop the least recently used cached versions beyond ``cache_max_bytes``."""
        if self.cache_max_bytes is None:
            return
        folders = [f for d in self.root.iterdir() if d.is_dir() and d.name != "datasets"
                   for f in d.iterdir() if f.is_dir() and _parse_version(f.name)]  # fmt: skip
        sizes = {f: sum(p.stat().st_size for p in f.rglob("*") if p.is_file()) for f in folders}
        total = sum(sizes.values())
        for folder in sorted(folders, key=lambda f: f.stat().st_mtime):
            if total <= self.cache_max_bytes:
                break
            if folder != keep:
                shutil.rmtree(folder, ignore_errors=True)
                total -= sizes[folder]

    def _remote_manifest(self, name: str, number: int) -> tuple[bytes | None, str | None]:
        raw = self.objects.get(self.objects.key(name, number, MANIFEST_FILE))
        digest = self.objects.get(self.objects.key(name, number, MANIFEST_DIGEST_FILE))
        return raw, None if digest is None else digest.decode()

    def manifest(self, name: str, version: int | str = "latest") -> dict[str, Any]:
        """The verified manifest (from the cache, or the bucket without fetching the files:
        listing models reads manifests only, as on the local store)."""
        number = self.resolve(name, version)
        if (self._name_dir(name) / str(number)).is_dir():
            return super().manifest(name, number)
        return parse_manifest(name, number, *self._remote_manifest(name, number))

    # ------------------------------------------------------------------ writing

    def _claim(self, name: str) -> int:
        """The next free version number, claimed by a conditional write (never reused)."""
        number = max(self._numbers(name, "claims"), default=0) + 1
        stamp = f"{socket.gethostname()}:{os.getpid()} {utc_now()}\n".encode()
        while not self.objects.put(
            self.objects.key(name, "claims", number), stamp, if_absent=True
        ):
            number += 1  # another publisher took it first
        return number

    def _commit(
        self, name: str, files: dict[str, bytes], base: dict[str, Any]
    ) -> PublishedVersion:
        """Claim a number, upload the files, the manifest's digest and the manifest, then the
        commit marker; the bytes just uploaded also become this machine's cached copy."""
        self._check_owner(name, base.get("tenant"))
        version = self._claim(name)
        manifest = {**base, "version": version, "created_at": utc_now()}
        raw = dump_manifest(manifest)
        files = {**files, MANIFEST_DIGEST_FILE: f"{fsio.sha256_bytes(raw)}\n".encode()}
        files[MANIFEST_FILE] = raw  # after its digest
        for path, data in files.items():
            _upload(self, self.objects.key(name, version, path), data)
        self.objects.put(self.objects.key(name, "committed", version), b"")  # now visible
        folder = self._name_dir(name) / str(version)
        _place(folder, {_member_path(name, version, Path(), p): d for p, d in files.items()})
        return PublishedVersion(name, version, folder, manifest)

    def delete(self, name: str, version: int | str) -> None:
        """Remove the commit marker (the version disappears for every reader), then its files;
        copies already cached by replicas keep serving."""
        number = self.resolve(name, version)
        self.objects.call("delete_object", Key=self.objects.key(name, "committed", number))
        self.objects.delete_prefix(self.objects.key(name, number) + "/")
        shutil.rmtree(self._name_dir(name) / str(number), ignore_errors=True)

    def cleanup(self, name: str | None = None) -> list[str]:
        """Remove the files of claimed, never committed versions older than the grace period
        (publishers that died); return what went."""
        removed = [] if name is not None else [f"datasets/{d}" for d in self.datasets.cleanup()]
        for each in [validate_name(name)] if name is not None else self._all_names():
            committed = set(self._numbers(each, "committed"))
            prefix = self.objects.key(each, "claims") + "/"
            for obj in self.objects.list(prefix):
                number = _parse_version(obj["Key"][len(prefix) :])
                age = time.time() - obj["LastModified"].timestamp()
                if number is None or number in committed or age < self.cleanup_grace_s:
                    continue
                if self.objects.list(self.objects.key(each, number) + "/"):
                    self.objects.delete_prefix(self.objects.key(each, number) + "/")
                    removed.append(f"{each}/{number}")
        return removed

    def _all_names(self) -> list[str]:
        """The valid model names with any object under them (committed or not)."""
        root = self.objects.key("") if self.objects.prefix else ""
        out = []
        for entry in self.objects.list(root, delimiter="/"):
            name = entry["Prefix"][len(root) :].rstrip("/")
            if name in RESERVED_NAMES:
                continue
            with contextlib.suppress(InvalidName):
                out.append(validate_name(name))
        return out


def _upload(store: ObjectModelStore, key: str, data: bytes) -> None:
    """One object of a version (module-level so tests can slow it down or kill mid-way)."""
    store.objects.put(key, data)


def _place(folder: Path, files: dict[Path, bytes]) -> None:
    """Write ``files`` (paths relative to ``folder``) into a temp folder beside it and rename
    that into place; a concurrent fetch of the same content may win, and its copy is as good."""
    tmp = folder.parent / f".fetch-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        for path, data in files.items():
            (tmp / path).parent.mkdir(exist_ok=True)
            (tmp / path).write_bytes(data)
        with contextlib.suppress(OSError):
            os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class ObjectDatasetStore(DatasetStore):
    """Uploaded data sets in ``<prefix>/datasets/<sha256>/`` on object storage: the array
    first, its record last (the record is what makes it visible), copied on first use into
    the local cache (and checked against its sha256 by every load)."""

    def __init__(self, cache: Path, objects: S3Bucket, cleanup_grace_s: float) -> None:
        super().__init__(cache)
        self.objects, self.cleanup_grace_s = objects, cleanup_grace_s

    def _remote(self, dataset_id: str, filename: str = "") -> str:
        return self.objects.key("datasets", dataset_id, filename)

    def _folder(self, dataset_id: str) -> Path:
        folder = super()._folder(dataset_id)  # checks the id's form
        if (folder / RECORD_FILE).exists():
            return folder
        record = self.objects.get(self._remote(dataset_id, RECORD_FILE))
        data = None if record is None else self.objects.get(self._remote(dataset_id, DATA_FILE))
        if record is not None and data is not None:  # else not stored: get() says so
            _place(folder, {Path(DATA_FILE): data, Path(RECORD_FILE): record})
        return folder

    def get(self, dataset_id: str) -> DatasetRecord:
        """The record, from the cache or the bucket (the array is fetched only to load it)."""
        if (DatasetStore._folder(self, dataset_id) / RECORD_FILE).exists():
            return super().get(dataset_id)
        return parse_record(dataset_id, self.objects.get(self._remote(dataset_id, RECORD_FILE)))

    def put(
        self,
        array: Any,
        name: str,
        *,
        columns: builtins.list[str] | None = None,
        report: dict[str, Any] | None = None,
    ) -> DatasetRecord:
        # validates, and keeps the local copy (its record renamed by a repeated upload)
        record = super().put(array, name, columns=columns, report=report)
        folder = self.root / record.id
        if self.objects.get(self._remote(record.id, RECORD_FILE)) is None:
            self.objects.put(self._remote(record.id, DATA_FILE), (folder / DATA_FILE).read_bytes())
        # The record last (it makes the array visible), and again on each upload: its name.
        self.objects.put(self._remote(record.id, RECORD_FILE), (folder / RECORD_FILE).read_bytes())
        return record

    def list(self) -> list[DatasetRecord]:
        prefix = self.objects.key("datasets") + "/"
        records = []
        for entry in self.objects.list(prefix, delimiter="/"):
            dataset_id = entry["Prefix"][len(prefix) :].rstrip("/")
            with contextlib.suppress(DatasetNotFound, CorruptDataset):
                records.append(self.get(dataset_id))
        return sorted(records, key=lambda r: (r.created_at, r.id))

    def delete(self, dataset_id: str) -> None:
        self.get(dataset_id)  # DatasetNotFound if it is not stored
        self.objects.call("delete_object", Key=self._remote(dataset_id, RECORD_FILE))
        self.objects.delete_prefix(self._remote(dataset_id))
        shutil.rmtree(self.root / dataset_id, ignore_errors=True)

    def cleanup(self) -> builtins.list[str]:  # this class's own list() shadows the builtin
        """Arrays whose record never came (a writer that died), older than the grace period."""
        removed = super().cleanup()
        prefix = self.objects.key("datasets") + "/"
        for obj in self.objects.list(prefix):
            dataset_id, _, filename = obj["Key"][len(prefix) :].partition("/")
            age = time.time() - obj["LastModified"].timestamp()
            if filename != DATA_FILE or age < self.cleanup_grace_s:
                continue
            if self.objects.get(self._remote(dataset_id, RECORD_FILE)) is None:
                self.objects.delete_prefix(self._remote(dataset_id))
                removed.append(dataset_id)
        return removed
