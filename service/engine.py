"""The inference engine: models from the store, on the device, computed off the event loop.

- Models load on first use (``ModelStore.load``) and stay in an LRU of ``model_cache_size``
  versions. "latest" is re-resolved against the store at most every ``poll_interval_s``, so a
  newly published version is served without a restart.
- All torch work runs off the event loop, in bounded thread pools (``inference_threads``
  each), so /healthz answers while a long sampling request runs. Quick batched passes (exact
  log_prob, forward transport) and long solves (sample, inverse transport, SLQ) have separate
  pools: a burst of sampling requests cannot starve scoring. Store I/O has its own pool.
- Exact log_prob and forward transport run on onnxruntime sessions over the model's exports
  where it has usable ones, on torch otherwise (``CPFLOW_RUNTIME``; see :mod:`service.runtime`);
  either way through a per-model :class:`MicroBatcher`. A damaged export is skipped with a
  warning and torch answers.
  Conditional models (p(x | c), a ``picnn`` potential with a ``context_dim``) take a context next to
  every input row and bypass the batcher: each request is computed on its own.
- A version that fails to load (corrupt files) is remembered for a short while and reported,
  without affecting other models.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import torch

from model_store import ModelNotFound, ModelStore, StoreUnavailable, open_store
from model_store.calibration import Reference
from model_store.manifest import manifest_columns
from service.batching import MicroBatcher
from service.metrics import ServiceMetrics
from service.runtime import Runtimes, calibrate, open_runtimes, planned_runtimes
from service.settings import Settings

__all__ = [
    "InferenceEngine",
    "LogProbResult",
    "SampleResult",
    "ServedModel",
    "TransportResult",
    "resolve_device",
]

log = logging.getLogger("cpflow.engine")
T = TypeVar("T")


class ModelLoadTimeout(RuntimeError):
    """A model load passed ``CPFLOW_LOAD_TIMEOUT_S`` (a stalled store read): 503 with
    Retry-After; the load is abandoned, so a later request tries again."""

    def __init__(self, name: str, version: int, seconds: float) -> None:
        super().__init__(
            f"loading model {name!r} version {version} took longer than {seconds:g} s "
            "(CPFLOW_LOAD_TIMEOUT_S); the model store may be stalled: retry later"
        )
        self.retry_after_s = max(1, round(seconds))


def _in_own_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run ``fn`` in a new daemon thread and return a future of its result: a read that never
    returns then holds only that thread, never a pool that later loads and /readyz need."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():  # abandoned (timed out) futures are left alone
            outcome()

    def work() -> None:
        try:
            outcome = partial(future.set_result, fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            outcome = partial(future.set_exception, exc)
        try:
            loop.call_soon_threadsafe(settle, outcome)
        except RuntimeError:  # the loop is closed: the server stopped, nobody waits for it
            pass

    threading.Thread(target=work, name="cpflow-load", daemon=True).start()
    return future


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given (checked)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"CPFLOW_DEVICE={spec} but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"CPFLOW_DEVICE={spec} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return device


@dataclass
class ServedModel:
    """A loaded model version with its batchers."""

    name: str
    version: int
    flow: Any
    manifest: dict[str, Any]
    dim: int
    dtype: torch.dtype
    device: torch.device
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)
    context_dim: int | None = None  # set for conditional models p(x | c)
    runtimes: Runtimes = field(default_factory=Runtimes)  # onnxruntime sessions by operation
    reference: Reference | None = None  # held-out scores: percentiles and drift (None: older)

    @property
    def conditional(self) -> bool:
        return self.context_dim is not None

    @property
    def columns(self) -> list[str]:
        """The names of the data columns (the training table's, else x1..xd)."""
        names = manifest_columns(self.manifest)
        return names if len(names) == self.dim else [f"x{j + 1}" for j in range(self.dim)]

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of an image model, None for a model over rows (from its loaded config)."""
        shape = self.flow.config.image_shape
        return None if shape is None else tuple(shape)


@dataclass
class LogProbResult:
    log_prob: torch.Tensor
    stderr: torch.Tensor | None
    method: str
    seed: int | None


@dataclass
class SampleResult:
    samples: torch.Tensor
    max_residual: float | None
    converged: bool
    iterations: int | None
    seed: int


@dataclass
class TransportResult:
    outputs: torch.Tensor
    max_residual: float | None
    converged: bool | None


def _dtype_of(flow: Any) -> torch.dtype:
    name = getattr(getattr(flow, "config", None), "dtype", None)
    if name in ("float32", "float64"):
        return getattr(torch, name)
    for p in flow.parameters():
        return p.dtype
    return torch.float32


def _inverse_summary(info: Any) -> tuple[float | None, bool, int | None]:
    residual = getattr(info, "residual", None)
    converged = getattr(info, "converged", None)
    iterations = getattr(info, "iterations", None)
    max_res = None
    if residual is not None and residual.numel() > 0:
        max_res = float(residual.max())
    ok = bool(converged.all()) if converged is not None else True
    return max_res, ok, int(iterations) if iterations is not None else None


class InferenceEngine:
    """Serves models from a :class:`ModelStore` on one device."""

    def __init__(
        self, settings: Settings, metrics: ServiceMetrics, store: ModelStore | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = (
            store
            if store is not None
            else open_store(
                settings.store_url or settings.store_dir,
                settings.cache_dir,
                settings.cache_max_bytes,
            )
        )
        self.device = resolve_device(settings.device)
        self.threads = settings.resolved_inference_threads(self.device.type)
        self.torch_threads = settings.resolved_torch_threads(self.device.type)
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="cpflow-infer")
        self._long = ThreadPoolExecutor(self.threads, thread_name_prefix="cpflow-solve")
        self._io = ThreadPoolExecutor(2, thread_name_prefix="cpflow-store")
        self._cache: OrderedDict[tuple[str, int], ServedModel] = OrderedDict()
        self._loading: dict[tuple[str, int], asyncio.Task[ServedModel]] = {}
        self._failures: dict[tuple[str, int], tuple[BaseException, float]] = {}
        self._versions: dict[str, tuple[list[int], float]] = {}
        self._owners: dict[str, tuple[int, str | None]] = {}
        self.stalled_loads: set[tuple[str, int]] = set()
        """Versions whose last load passed the deadline (reported by /readyz until one loads)."""

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Apply the torch thread setting (process-wide) and make sure the store root exists."""
        torch.set_num_threads(self.torch_threads)
        try:
            self.settings.store_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # read-only mount: /readyz will say so
            log.warning("cannot create the store directory", extra={"error": str(exc)})
        log.info(
            "engine started",
            extra={
                "device": str(self.device),
                "inference_threads": self.threads,
                "torch_threads": self.torch_threads,
                "store_dir": str(self.settings.store_dir),
            },
        )

    def close(self) -> None:
        """Stop the pools; running computations finish in the background."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._long.shutdown(wait=False, cancel_futures=True)
        self._io.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a quick inference pass ``fn(*args)`` in the inference pool and await its result."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def run_long(self, fn: Callable[[], T]) -> T:
        """Run a long solve (sampling, inversion, SLQ) in its own pool and await it."""
        return await asyncio.get_running_loop().run_in_executor(self._long, fn)

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store call in the I/O pool (never queued behind inference)."""
        return await asyncio.get_running_loop().run_in_executor(self._io, lambda: fn(*args))

    # ---------------------------------------------------------------- models

    def loaded(self) -> list[tuple[str, int]]:
        """Keys (name, version) of the models in memory, least recently used first."""
        return list(self._cache)

    def is_loaded(self, name: str, version: int) -> bool:
        return (name, version) in self._cache

    def cached(self, name: str, version: int) -> ServedModel:
        """A loaded version (KeyError when it is not in memory); its LRU place is unchanged."""
        return self._cache[(name, version)]

    def forget(self, name: str, version: int) -> bool:
        """Drop a loaded version (its files no longer verify); True if it was loaded."""
        dropped = self._cache.pop((name, version), None) is not None
        self.metrics.loaded_models.set(len(self._cache))
        return dropped

    async def published(self, name: str) -> list[int]:
        """The store's versions of ``name``, looked up at most every ``poll_interval_s``. A
        loaded version that is no longer published (deleted, maybe by another replica) is
        dropped from memory here, so every replica forgets it within that interval."""
        now = time.monotonic()
        cached = self._versions.get(name)
        if cached is not None and now - cached[1] < self.settings.poll_interval_s:
            return cached[0]
        try:
            found = await self.io(self.store.versions, name)
        except StoreUnavailable:
            if cached is None:
                raise
            # object storage unreachable: keep serving the versions known to be published
            log.warning("store unreachable; serving the last known version", extra={"model": name})
            return cached[0]
        self._versions[name] = (found, now)
        for gone in [v for n, v in self._cache if n == name and v not in found]:
            self.forget(name, gone)
            log.info("model version no longer published; unloaded",
                     extra={"model": name, "version": gone})  # fmt: skip
        return found

    async def _unknown_detail(self, name: str) -> str:
        """Why ``name`` has no version, with the closest published name where every model is
        shared (with per-tenant models a suggestion could name another tenant's); the store
        is listed off the event loop."""
        detail = getattr(self.store, "unknown_model_detail", None)
        if self.settings.model_scope != "shared" or detail is None:
            return "it has no published version"
        try:
            return str(await asyncio.to_thread(detail, name))
        except StoreUnavailable:
            return "it has no published version"

    async def resolve(self, name: str, version: int | None) -> int:
        """The version to serve: the pinned one, or the latest, if the store (as last looked
        up, see :meth:`published`) has it; else ModelNotFound."""
        found = await self.published(name)
        if version is None:
            if not found:
                raise ModelNotFound(name, detail=await self._unknown_detail(name))
            return found[-1]
        if version not in found:
            raise ModelNotFound(name, version)
        return version

    async def owner(self, name: str) -> str | None:
        """The tenant whose model ``name`` is (None: shared); ModelNotFound if it has no
        version. Read from the store once per latest version (a name keeps its owner)."""
        latest = await self.resolve(name, None)
        cached = self._owners.get(name)
        if cached is not None and cached[0] == latest:
            return cached[1]
        owner = await self.io(self.store.owner, name)
        self._owners[name] = (latest, owner)
        return owner

    def unpublished(self, name: str) -> None:
        """``name``'s versions changed here (a deletion): forget what was known of them, and
        the loaded versions the store no longer has are dropped by the next look-up."""
        self._versions.pop(name, None)
        self._owners.pop(name, None)
        for key in [k for k in self._failures if k[0] == name]:
            del self._failures[key]

    async def get(self, name: str, version: int | None = None) -> ServedModel:
        """The served model for ``name`` at ``version`` (None: latest), loading it if needed."""
        v = await self.resolve(name, version)
        key = (name, v)
        model = self._cache.get(key)
        if model is not None:
            self._cache.move_to_end(key)
            return model
        failure = self._failures.get(key)
        if failure is not None:
            if time.monotonic() - failure[1] < max(self.settings.poll_interval_s, 1.0):
                raise failure[0]
            del self._failures[key]
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(name, v))
            self._loading[key] = task
            task.add_done_callback(partial(self._loaded, key))
        return await asyncio.shield(task)

    def _stall_ended(self, key: tuple[str, int], attempt: asyncio.Future[Any]) -> None:
        if not attempt.cancelled():
            attempt.exception()  # retrieved: an abandoned load's error is not worth a warning
        self.stalled_loads.discard(key)

    def _loaded(self, key: tuple[str, int], _task: asyncio.Task[ServedModel]) -> None:
        self._loading.pop(key, None)

    async def _load(self, name: str, version: int) -> ServedModel:
        from model_store import CorruptModel

        key = (name, version)
        start = time.perf_counter()
        deadline = self.settings.load_timeout_s
        attempt = _in_own_thread(partial(self._load_sync, name, version))
        try:
            loaded = await asyncio.wait_for(asyncio.shield(attempt), deadline)
        except TimeoutError:
            self.metrics.model_loads.labels("timeout").inc()
            self.stalled_loads.add(key)
            # a stalled read that returns at last means the store answers again
            attempt.add_done_callback(partial(self._stall_ended, key))
            log.error("model load timed out", extra={"model": name, "version": version,
                                                      "timeout_s": deadline})  # fmt: skip
            raise ModelLoadTimeout(name, version, deadline) from None
        except ModelNotFound:
            self.metrics.model_loads.labels("not_found").inc()
            raise
        except CorruptModel as exc:
            self.metrics.model_loads.labels("corrupt").inc()
            self._failures[key] = (exc, time.monotonic())
            log.error("model failed to load", extra={"model": name, "version": version,
                                                     "error": str(exc)})  # fmt: skip
            raise
        except Exception as exc:
            self.metrics.model_loads.labels("error").inc()
            self._failures[key] = (exc, time.monotonic())
            log.exception("model failed to load", extra={"model": name, "version": version})
            raise
        self.metrics.model_loads.labels("ok").inc()
        self.stalled_loads.discard(key)
        model = self._serve(*loaded)
        self._cache[key] = model
        self._cache.move_to_end(key)
        while len(self._cache) > self.settings.model_cache_size:
            old, _ = self._cache.popitem(last=False)
            log.info("model evicted", extra={"model": old[0], "version": old[1]})
        self.metrics.loaded_models.set(len(self._cache))
        log.info(
            "model loaded",
            extra={"model": name, "version": version, "dim": model.dim,
                   "runtimes": model.runtimes.describe(),
                   "load_s": round(time.perf_counter() - start, 3)},
        )  # fmt: skip
        return model

    async def preload(self, names: tuple[str, ...]) -> None:
        """Load the latest version of each name ('*': every model) so first requests are fast.

        Failures are logged, never raised: a bad model must not stop the server starting.
        """
        if "*" in names:
            names = tuple(await self.io(self.store.names))
        for name in names[: self.settings.model_cache_size]:
            try:
                await self.get(name)
            except Exception as exc:  # noqa: BLE001 - logged; the model answers 404/503 later
                log.warning("preload failed", extra={"model": name, "error": str(exc)})

    def _load_sync(self, name: str, version: int) -> tuple[Any, Runtimes]:
        """The verified model and its onnxruntime sessions. A damaged ONNX file does not stop
        the verified weights from being served by torch (logged as a warning)."""
        from model_store import CorruptModel

        device = str(self.device)
        try:
            loaded = self.store.load(name, version, device=device)
        except CorruptModel as exc:
            if not exc.file.endswith(".onnx"):
                raise
            log.warning(
                "ONNX export damaged; torch answers",
                extra={"model": name, "version": version, "error": str(exc)},
            )
            loaded = self.store.load(name, version, device=device, exports=False)
        loaded.flow.eval()
        for p in loaded.flow.parameters():
            p.requires_grad_(False)
        runtimes = open_runtimes(
            loaded,
            self.settings.runtime,
            device=device,
            threads=self.torch_threads,
            cache_dir=self.settings.cache_dir,
        )
        if self.settings.runtime == "auto" and runtimes.sessions:
            flow = loaded.flow
            passes = self._torch_passes(flow)
            timings = calibrate(runtimes, passes, flow.dim, _dtype_of(flow), (name, version))
            log.info(
                "runtimes timed",
                extra={"model": name, "version": version, "onnx_torch_ms": timings},
            )
        return loaded, runtimes

    def _torch_passes(self, flow: Any) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Operation -> torch pass over a batch of rows (results on the CPU)."""
        device = self.device

        def exact(x: torch.Tensor) -> torch.Tensor:
            return flow.log_prob(x.to(device), method="exact").cpu()

        def forward(x: torch.Tensor) -> torch.Tensor:
            return flow.transform(x.to(device)).cpu()

        return {"log_prob_exact": exact, "transport_forward": forward}

    def runtimes_of(self, name: str, version: int, manifest: dict[str, Any]) -> dict[str, str]:
        """Operation -> runtime ("onnx" or "torch"): the loaded model's, else the plan for it."""
        model = self._cache.get((name, version))
        if model is not None:
            return model.runtimes.describe()
        return planned_runtimes(manifest, self.settings.runtime)

    def _serve(self, loaded: Any, runtimes: Runtimes) -> ServedModel:
        flow = loaded.flow
        model = ServedModel(
            name=loaded.name,
            version=int(loaded.version),
            flow=flow,
            manifest=loaded.manifest,
            dim=int(flow.dim),
            dtype=_dtype_of(flow),
            device=self.device,
            context_dim=flow.context_dim,
            runtimes=runtimes,
            reference=Reference.from_manifest(loaded.manifest),
        )
        if model.conditional:
            return model  # no batchers: each row carries its own context
        label = model.name

        def observer(op: str) -> Callable[[int, int], None]:
            rows_h = self.metrics.batch_rows.labels(label, op)
            reqs_h = self.metrics.batch_requests.labels(label, op)

            def observe(rows: int, requests: int) -> None:
                rows_h.observe(rows)
                reqs_h.observe(requests)

            return observe

        max_rows = self.settings.max_coalesce_rows
        passes = self._torch_passes(flow)
        wait = self.settings.batch_wait_ms / 1000
        model.batchers["log_prob_exact"] = MicroBatcher(
            self._pass(model, "log_prob_exact", passes["log_prob_exact"]),
            self.run,
            max_rows,
            observer("log_prob"),
            max_wait_s=wait,
        )
        model.batchers["forward"] = MicroBatcher(
            self._pass(model, "transport_forward", passes["transport_forward"]),
            self.run,
            max_rows,
            observer("forward"),
            max_wait_s=wait,
        )
        return model

    def _pass(
        self, model: ServedModel, operation: str, torch_fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """One computation pass of ``operation``: the model's onnxruntime session when it has
        one for a batch of this size (dropped for torch, with a warning, if it fails), else
        ``torch_fn`` in inference mode; timed by runtime."""
        seconds = self.metrics.inference_seconds
        key = (model.name, model.version)

        def compute(x: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            session = model.runtimes.sessions.get(operation)
            if session is not None and model.runtimes.of(operation, x.shape[0]) == "onnx":
                try:
                    out = torch.from_numpy(session(x.numpy()))
                except Exception as exc:  # noqa: BLE001 - torch answers instead
                    model.runtimes.drop(operation, f"{type(exc).__name__}: {exc}", key)
                else:
                    elapsed = time.perf_counter() - start
                    seconds.labels(model.name, operation, "onnx").observe(elapsed)
                    return out
            with torch.inference_mode():
                out = torch_fn(x)
            elapsed = time.perf_counter() - start
            seconds.labels(model.name, operation, "torch").observe(elapsed)
            return out

        return compute

    def _count(self, model: ServedModel, operation: str, rows: int = 1) -> None:
        """One request of ``operation``, labelled with the runtime a pass of its own ``rows``
        takes (a coalesced pass may be larger: cpflow_inference_pass_seconds has its own)."""
        runtime = model.runtimes.of(operation, rows)
        self.metrics.inference_requests.labels(model.name, operation, runtime).inc()

    # ---------------------------------------------------------------- operations

    def _iterations(self, model: ServedModel, requested: int | None) -> int | None:
        """The solver's iteration budget: the request's, or the model's default, never above
        ``max_inverse_iterations`` (one request must not occupy a thread for hours)."""
        cap = self.settings.max_inverse_iterations
        if requested is not None:
            return min(requested, cap)
        default = getattr(getattr(model.flow, "config", None), "inverse_max_iter", None)
        return cap if default is None or default > cap else None

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def method_for(self, model: ServedModel, method: str) -> str:
        """The log-det method a request runs: auto is exact up to CPFLOW_EXACT_MAX_DIM
        dimensions, slq above; exact and slq as asked."""
        if method != "auto":
            return method
        return "exact" if model.dim <= self.settings.exact_max_dim else "slq"

    async def log_prob(
        self,
        model: ServedModel,
        x: torch.Tensor,
        method: str,
        *,
        probes: int | None = None,
        steps: int | None = None,
        seed: int | None = None,
        context: torch.Tensor | None = None,
    ) -> LogProbResult:
        """log p(x) per row (log p(x | c) with ``context`` (n, k) for a conditional model);
        ``method`` auto is resolved by :meth:`method_for`."""
        method = self.method_for(model, method)
        label = model.name
        self.metrics.rows.labels(label, "log_prob").inc(x.shape[0])
        flow, device = model.flow, self.device
        cargs = () if context is None else (context.to(device),)
        if method == "exact":
            self._count(model, "log_prob_exact", x.shape[0])
            if context is None:
                lp = await model.batchers["log_prob_exact"].submit(x)
            else:
                lp = await self.run(
                    self._pass(
                        model,
                        "log_prob_exact",
                        lambda x: flow.log_prob(x.to(device), *cargs, method="exact").cpu(),
                    ),
                    x,
                )
            return LogProbResult(lp, None, "exact", None)
        self._count(model, "log_prob_slq")
        seed = secrets.randbits(63) if seed is None else seed

        def slq() -> tuple[torch.Tensor, torch.Tensor | None]:
            lp, se = flow.log_prob(
                x.to(device),
                *cargs,
                method="slq",
                probes=probes,
                steps=steps,
                generator=self._generator(seed),
                return_stderr=True,
            )
            return lp.detach().cpu(), (se.detach().cpu() if se is not None else None)

        lp, se = await self.run_long(slq)
        return LogProbResult(lp, se, "slq", seed)

    async def sample(
        self,
        model: ServedModel,
        n: int,
        *,
        seed: int | None = None,
        tolerance: float | None = None,
        max_iterations: int | None = None,
        solver: str | None = None,
        context: torch.Tensor | None = None,
    ) -> SampleResult:
        """n samples in data units, drawn by inverting the flow on seeded normal draws; for a
        conditional model ``context`` (n, k) gives each sample's context."""
        self._count(model, "sample")
        seed = secrets.randbits(63) if seed is None else seed
        flow, device = model.flow, self.device
        max_iterations = self._iterations(model, max_iterations)

        def draw() -> tuple[torch.Tensor, Any]:
            # flow.sample's seeded draws, inverted here so that the solver option applies
            gen = self._generator(seed)
            z = torch.randn(n, model.dim, generator=gen, device=gen.device, dtype=model.dtype)
            kwargs = {"solver": solver} if solver is not None else {}
            c = None if context is None else context.to(device)
            x, info = flow.inverse(
                z.to(device), c, tol=tolerance, max_iter=max_iterations, **kwargs
            )
            return x.detach().cpu(), info

        x, info = await self.run_long(draw)
        max_res, ok, iters = _inverse_summary(info)
        self._observe_inversion(model, n, max_res, info, iters, "sample")
        return SampleResult(x, max_res, ok, iters, seed)

    async def transport(
        self,
        model: ServedModel,
        x: torch.Tensor,
        direction: str,
        *,
        tolerance: float | None = None,
        max_iterations: int | None = None,
        solver: str | None = None,
        context: torch.Tensor | None = None,
    ) -> TransportResult:
        """forward: x -> z = f(x); inverse: z -> x with its residual (given ``context`` (n, k)
        for a conditional model)."""
        flow, device = model.flow, self.device
        cargs = () if context is None else (context.to(device),)
        if direction == "forward":
            self._count(model, "transport_forward", x.shape[0])
            self.metrics.rows.labels(model.name, "transport_forward").inc(x.shape[0])
            if context is None:
                z = await model.batchers["forward"].submit(x)
            else:
                z = await self.run(
                    self._pass(
                        model,
                        "transport_forward",
                        lambda x: flow.transform(x.to(device), *cargs).cpu(),
                    ),
                    x,
                )
            return TransportResult(z, None, None)
        self._count(model, "transport_inverse")
        max_iterations = self._iterations(model, max_iterations)

        def invert() -> tuple[torch.Tensor, Any]:
            kwargs = {"solver": solver} if solver is not None else {}
            out, info = flow.inverse(
                x.to(device), *cargs, tol=tolerance, max_iter=max_iterations, **kwargs
            )
            return out.detach().cpu(), info

        out, info = await self.run_long(invert)
        max_res, ok, iters = _inverse_summary(info)
        self._observe_inversion(model, x.shape[0], max_res, info, iters, "transport_inverse")
        return TransportResult(out, max_res, ok)

    def _observe_inversion(
        self,
        model: ServedModel,
        rows: int,
        max_res: float | None,
        info: Any,
        iters: int | None,
        op: str,
    ) -> None:
        m = self.metrics
        m.rows.labels(model.name, op).inc(rows)
        if iters is not None:
            m.inversion_iterations.labels(model.name).observe(iters)
        if max_res is not None:
            m.inversion_residual.labels(model.name).observe(max_res)
        converged = getattr(info, "converged", None)
        if converged is not None:
            m.inversion_unconverged.labels(model.name).inc(int((~converged).sum()))
