"""Settings of the service's processes, read from ``CPFLOW_*`` environment variables by
pydantic-settings: :class:`Settings` (the HTTP service, cpflow-serve) and :class:`JobSettings`
(the training-job queue that the API and cpflow-worker share). docs/configuration.md's table
documents every field of both (tests/test_docs.py checks it).

Use :func:`get_settings` (cached) rather than a module-level instance, so importing the app
never needs a full environment and tests can build their own :class:`Settings`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cpflow.config import EXACT_MAX_DIM
from model_store.object_store import DEFAULT_CACHE_DIR

__all__ = [
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_LEASE_S",
    "DEFAULT_QUEUE_NAME",
    "DEFAULT_TENANT",
    "JobSettings",
    "KeyLimits",
    "Role",
    "Settings",
    "TenantKey",
    "check_rate_limit",
    "exported_environment",
    "get_settings",
]

DEFAULT_QUEUE_NAME = "cpflow-training"
"""RQ queue name; also namespaces the job records (``cpflow:<queue>:``)."""

DEFAULT_LEASE_S = 60.0
"""Seconds without a heartbeat after which a running job counts as abandoned (worker lost)."""

DEFAULT_HEARTBEAT_S = 5.0
"""Seconds between two heartbeats of a running job (must be well under the lease)."""

_FROM_ENVIRONMENT = SettingsConfigDict(
    env_prefix="CPFLOW_", env_ignore_empty=True, extra="ignore", frozen=True
)
"""How every settings class here reads the environment: CPFLOW_<FIELD>, empty means unset."""

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def check_rate_limit(value: str | None) -> str | None:
    """``value`` if the limits library can parse it (e.g. '600/minute'), else a ValueError."""
    if value is None or not value.strip():
        return None
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError as exc:
        raise ValueError(f"rate limit {value!r}: {exc}; write e.g. '600/minute'") from None
    return value


class KeyLimits(BaseModel):
    """One API key's own quotas (CPFLOW_KEY_LIMITS); unset fields use the settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_active_jobs: int | None = Field(default=None, ge=0)
    max_job_work: int | None = Field(default=None, ge=1)
    rate_limit: str | None = None

    @field_validator("rate_limit")
    @classmethod
    def _check_rate(cls, value: str | None) -> str | None:
        return check_rate_limit(value)


DEFAULT_TENANT = "default"
"""The tenant of plain CPFLOW_API_KEYS keys, and of every caller when the server has no keys."""


class Role(StrEnum):
    """What an API key may do (service.tenancy says which routes need which role)."""

    READ = "read"
    TRAIN = "train"
    ADMIN = "admin"


class TenantKey(BaseModel):
    """One hashed API key of CPFLOW_API_KEY_HASHES: its tenant and roles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    roles: tuple[Role, ...] = Field(default=(Role.READ,), min_length=1)


class Settings(BaseSettings):
    """Everything the HTTP service (and its job routes) can be configured with."""

    model_config = _FROM_ENVIRONMENT

    store_dir: Path = Field(
        default=Path("./var/store"),
        description="Root directory of the model store (manifests, weights, plots, datasets).",
    )
    store_url: str | None = Field(
        default=None,
        description="Model store as a URL: s3://bucket/prefix (S3-compatible object storage; "
        "endpoint, region and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) or a "
        "folder (file:///path). Unset: CPFLOW_STORE_DIR.",
    )
    cache_dir: Path = Field(
        default=DEFAULT_CACHE_DIR,
        description="Local, digest-checked copies of the versions served from an s3:// store.",
    )
    cache_max_bytes: int = Field(
        default=10 * 1024**3,
        ge=1024,
        description="Largest size of CPFLOW_CACHE_DIR's model copies; the least recently used "
        "versions are dropped beyond it.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis URL for the training-job queue; /readyz reports whether it answers.",
    )
    device: str = Field(
        default="auto",
        description="Inference device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.",
    )
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        repr=False,
        description="Comma-separated API keys. Unset or empty: no auth. Set: every /v1 route "
        "needs 'Authorization: Bearer <key>'; /healthz, /readyz and /metrics stay open.",
    )
    preload_models: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Comma-separated model names whose latest version loads in the background "
        "at start-up ('*': every model, up to model_cache_size); others load on first use.",
    )
    max_batch: int = Field(
        default=10_000,
        ge=1,
        description="Most input rows one log_prob/transport request may send.",
    )
    max_samples: int = Field(
        default=10_000, ge=1, description="Most samples one /sample request may ask for."
    )
    max_job_processes: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Most data-parallel processes one training job may ask for "
        "(resources.processes); a worker runs them all on its machine.",
    )
    max_inverse_iterations: int = Field(
        default=10_000,
        ge=1,
        description="Largest max_iterations a sample or inverse-transport request may ask for "
        "(bounds the work one request can cause).",
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest JSON request body in bytes; larger bodies get 413.",
    )
    max_upload_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Largest dataset upload (multipart body under /v1/datasets) or CSV sent to "
        ".../log_prob.csv, in bytes.",
    )
    runtime: Literal["auto", "torch", "onnx"] = Field(
        default="auto",
        description="Runtime of exact log_prob and forward transport: auto (onnxruntime over "
        "the exports a version ships, torch otherwise), onnx (also derive missing exports into "
        "CPFLOW_CACHE_DIR when a version loads) or torch (never onnxruntime). SLQ, sampling "
        "and inverse transport always run on torch; a damaged export falls back to torch.",
    )
    exact_max_dim: int = Field(
        default=EXACT_MAX_DIM,
        ge=1,
        description="log_prob method=auto uses the exact Hessian log-det up to this dimension, "
        "stochastic Lanczos quadrature (SLQ) above it.",
    )
    model_cache_size: int = Field(
        default=8, ge=1, description="How many loaded model versions stay in memory (LRU)."
    )
    load_timeout_s: float = Field(
        default=60.0,
        gt=0.0,
        description="Deadline of one model load (store reads, checks, ONNX sessions): past it "
        "the request gets 503 model_load_timeout with Retry-After, the load is abandoned and "
        "the next request tries again, so a fixed store recovers without a restart.",
    )
    poll_interval_s: float = Field(
        default=1.0,
        ge=0.0,
        description="Least time between two store look-ups of a model's latest version; a newly "
        "published version is served at most this long after it appears.",
    )
    inference_threads: int | None = Field(
        default=None,
        ge=1,
        description="Threads per inference pool (one pool for quick batched passes, one for "
        "long solves: sample, inverse, SLQ). Default: min(4, CPU cores) on CPU, 2 on CUDA.",
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch intra-op threads (torch.set_num_threads). Default: CPU cores divided "
        "by inference_threads, at least 1, so the pool does not oversubscribe the cores.",
    )
    max_coalesce_rows: int = Field(
        default=4096,
        ge=1,
        description="Most rows the per-model micro-batcher merges from concurrent small "
        "requests into one forward pass.",
    )
    batch_wait_ms: float = Field(
        default=5.0,
        ge=0.0,
        le=1000.0,
        description="Under concurrency, how long (at most; also at most a quarter of the last "
        "pass) the micro-batcher waits for callers it just answered to send their next request, "
        "so they join the next pass. 0 disables. A lone client never waits.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Level of the structured JSON logs."
    )
    job_timeout_s: int = Field(
        default=24 * 3600, ge=1, description="Wall-clock limit of one training job (RQ timeout)."
    )
    job_retention_s: int = Field(
        default=7 * 24 * 3600,
        ge=1,
        description="How long finished training jobs and their results stay visible.",
    )
    # Web console (/ui) and CSV scoring
    console: bool = Field(
        default=True,
        description="Serve the web console at /ui (browser pages over the /v1 API; the API's "
        "own auth applies to every call they make).",
    )
    max_csv_rows: int = Field(
        default=1_000_000,
        ge=1,
        description="Most rows one POST .../log_prob.csv may send (its body is also capped by "
        "CPFLOW_MAX_UPLOAD_BYTES); they are scored CPFLOW_MAX_BATCH rows at a time.",
    )

    # ---- calibrated scores and drift (model_store.calibration, service.drift)
    drift_window: int = Field(
        default=4000,
        ge=0,
        description="Most recent scored rows kept per model version to compare with its "
        "held-out scores (GET /v1/models/{name}/drift, cpflow_drift_* gauges). 0: no drift "
        "monitoring.",
    )
    drift_storage: Literal["redis", "memory"] = Field(
        default="redis",
        description="Where the window lives: redis (CPFLOW_REDIS_URL, one window shared by the "
        "replicas; this process's own window while Redis does not answer) or memory (each "
        "process its own).",
    )
    drift_alpha: float = Field(
        default=0.01,
        gt=0.0,
        lt=1.0,
        description="A version's traffic counts as drifted when the two-sample KS test of its "
        "window against its held-out scores has a p-value under this.",
    )

    # ---- quotas and request-rate limits (service.quotas, service.ratelimit)
    max_active_jobs_per_key: int = Field(
        default=8,
        ge=0,
        description="Most queued+running training jobs one API key may have (without API keys: "
        "all callers together); more get 429 job_quota_exceeded. 0: no limit.",
    )
    max_active_jobs: int = Field(
        default=32,
        ge=0,
        description="Most queued+running training jobs in total, over every key and API "
        "replica sharing Redis. 0: no limit.",
    )
    max_job_work: int = Field(
        default=100_000_000,
        ge=1,
        description="Largest training.iterations x training.batch_size x resources.processes "
        "(rows drawn in training) one job may ask for; larger jobs get 422 job_too_large.",
    )
    quota_retry_after_s: int = Field(
        default=30, ge=1, description="Retry-After of a 429 job_quota_exceeded answer."
    )
    rate_limit: str | None = Field(
        default=None,
        description="Request-rate limit per API key (per client address without keys, and for "
        "requests failing auth) on /v1 and /v2, in the limits library's notation: "
        "'600/minute', '20/second;600/minute'. Unset: no limit.",
    )
    rate_limit_storage: Literal["auto", "redis", "memory"] = Field(
        default="auto",
        description="Where request counts live: redis (CPFLOW_REDIS_URL, shared by replicas), "
        "memory (this process), auto (redis when it answers, else memory until it does). With "
        "Redis down the limiter fails open (requests pass, a warning is logged).",
    )
    rate_limit_reprobe_s: float = Field(
        default=30.0,
        gt=0,
        description="With storage auto counting in the process because Redis did not answer: "
        "how often Redis is asked again; once it answers, counts move there.",
    )
    key_limits: dict[str, KeyLimits] = Field(
        default={},
        repr=False,
        description='Per-key overrides as JSON: {"<api key>": {"max_active_jobs": 2, '
        '"max_job_work": 1000000, "rate_limit": "10/second"}}; unset fields use the settings.',
    )

    # ---- tenants and roles (service.tenancy, service.auth)
    api_key_hashes: dict[str, TenantKey] = Field(
        default={},
        repr=False,
        description='Hashed API keys with their tenant and roles, as JSON: {"<sha256 hex of the '
        'key>": {"tenant": "team-a", "roles": ["read", "train"]}}. Roles: read (score, read), '
        "train (upload, submit, cancel, delete data sets), admin. Jobs and data sets are seen "
        "only by their own tenant. Several hashes per tenant allow key rotation.",
    )

    model_scope: Literal["shared", "tenant"] = Field(
        default="shared",
        description="shared: every tenant sees and scores every model. tenant: a model a "
        "tenant's training job publishes is that tenant's (others get 404 model_not_found, as "
        "for a missing one); models published outside a tenant (cpflow-train, older versions) "
        "stay shared. A name has one owner: a job under a name another owner uses gets 409 "
        "model_name_taken.",
    )

    # ---- stored models' health (service.model_health)
    verify_interval_s: float = Field(
        default=300.0,
        ge=0.0,
        description="Every this many seconds each replica re-checks the files of the model "
        "versions it has loaded against their manifests and unloads a damaged one (0: only on "
        "demand, POST /v1/models/{name}/verify).",
    )

    replica_view_s: float = Field(
        default=15.0,
        ge=0.0,
        description="Every this many seconds each serving process publishes its loaded "
        "versions and their weights' sha256 to Redis (expiring after three periods) and "
        "compares them with the other replicas'; /readyz and the metric "
        "cpflow_replica_view_disagreements report versions served with different weights "
        "(0: off).",
    )

    # ---- processes: cpflow-serve's server and cpflow-worker's shutdown (ops, issue #31)
    host: str = Field(
        default="127.0.0.1",
        description="Interface cpflow-serve binds (0.0.0.0 in containers); --host overrides it.",
    )
    port: int = Field(
        default=8000, ge=0, le=65535, description="TCP port of cpflow-serve; --port overrides it."
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="Folder where every worker process of cpflow-serve writes its metrics "
        "(prometheus_client multiprocess mode), so /metrics reports the totals of all of them. "
        "cpflow-serve --workers N>1 sets it (a fresh temporary folder unless given; emptied at "
        "start) together with PROMETHEUS_MULTIPROC_DIR; under another process manager set both.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="cpflow-serve closes a connection whose request line and headers are not "
        "complete this long after the request began (or after connecting).",
    )
    body_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="cpflow-serve closes a connection whose request body is not complete this "
        "long after its headers (a trickling upload); size it for the largest upload "
        "(CPFLOW_MAX_UPLOAD_BYTES) over the slowest link you serve.",
    )
    keep_alive_s: int = Field(
        default=5, ge=1, description="Idle time after which a kept-alive connection closes."
    )
    max_connections: int | None = Field(
        default=2048,
        ge=1,
        description="Most open connections (and running requests) per cpflow-serve worker "
        "process; requests beyond it get 503 at once instead of piling up.",
    )
    shutdown_timeout_s: int = Field(
        default=25,
        ge=0,
        description="On SIGTERM cpflow-serve stops accepting, lets requests in flight finish "
        "for at most this long, then cancels them and exits; keep it under the orchestrator's "
        "grace period (Kubernetes: 30 s).",
    )
    serve_process: bool = Field(
        default=False,
        description="Set by cpflow-serve for its processes: once the app has shut down, the "
        "process exits within a second instead of waiting for computations still running in "
        "the inference threads. Leave it unset elsewhere.",
    )
    worker_shutdown_grace_s: float = Field(
        default=20.0,
        ge=0.0,
        description="On SIGTERM, how long cpflow-worker lets its running job go on; a job still "
        "running then is handed back to the queue (another worker starts it again) and the "
        "worker exits. Keep it under the orchestrator's stop grace (compose: 30 s here).",
    )

    @field_validator("rate_limit")
    @classmethod
    def _check_rate(cls, value: str | None) -> str | None:
        return check_rate_limit(value)

    @field_validator("api_key_hashes")
    @classmethod
    def _check_hashes(cls, value: dict[str, TenantKey]) -> dict[str, TenantKey]:
        for digest in value:
            if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
                raise ValueError(
                    f"{digest[:12]}...: not a sha256 hex digest; store sha256(key), e.g. "
                    'printf %s "$KEY" | sha256sum'
                )
        return value

    @field_validator("api_keys", "preload_models", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE_RE.match(value):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def resolved_inference_threads(self, device_type: str) -> int:
        """Inference pool size: the setting, or a default sized to the device."""
        if self.inference_threads is not None:
            return self.inference_threads
        return 2 if device_type == "cuda" else max(1, min(4, os.cpu_count() or 1))

    def resolved_torch_threads(self, device_type: str) -> int:
        """torch intra-op thread count: the setting, or cores per inference thread."""
        if self.torch_threads is not None:
            return self.torch_threads
        cores = os.cpu_count() or 1
        return max(1, cores // self.resolved_inference_threads(device_type))


class JobSettings(BaseSettings):
    """The training-job queue, shared by the API (submits jobs, reads their records, fails
    those whose lease ran out) and cpflow-worker (runs them and beats their heartbeat): both
    must see the same values."""

    model_config = _FROM_ENVIRONMENT

    queue_name: str = Field(
        default=DEFAULT_QUEUE_NAME,
        min_length=1,
        description="RQ queue the API enqueues training jobs on and cpflow-worker listens to; "
        "it also namespaces the job records in Redis (cpflow:<queue>:...).",
    )
    job_lease_s: float = Field(
        default=DEFAULT_LEASE_S,
        gt=0,
        description="Seconds without a heartbeat after which a running job counts as abandoned "
        "(its worker died) and is marked failed by whoever reads it.",
    )
    job_heartbeat_s: float = Field(
        default=DEFAULT_HEARTBEAT_S,
        gt=0,
        description="Seconds between two heartbeats of a running job; keep it well under "
        "CPFLOW_JOB_LEASE_S.",
    )


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


@contextmanager
def exported_environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the child processes started inside (uvicorn's workers
    read their settings from them); the previous values are restored after."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in before.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
