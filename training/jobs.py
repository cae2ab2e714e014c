"""The RQ job function: train a flow from a job spec and publish it, reporting to a job record.

The API enqueues :func:`run_training_job` by its dotted path ``training.jobs.run_training_job``
with ``kwargs={"spec": ...}`` (JSON only). ``spec["runtime"]`` says where the job's record
lives in Redis (``record_key``) and how often to heartbeat; the record fields are described in
``service/queue.py``. This module writes only these fields: status, started_at, finished_at,
heartbeat_at, progress, phase, resolved, result, error, worker; it reads ``cancel_requested``.

Why a heartbeat thread: a worker killed with SIGKILL cannot say so; the API marks a running job
whose heartbeat is older than its lease as failed. Why a parent check: RQ runs the job in a
forked "work horse" in its own process group, which outlives a SIGKILLed worker; the horse
notices that its parent is gone and stops instead of training on unsupervised.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from redis.exceptions import RedisError

from training.datasets.splits import DatasetSplits
from training.datasets.tables import Holdout, TableOptions, table_splits
from training.distributed import launch
from training.group_events import die_with_parent, parse_event
from training.settings import TrainingSettings, child_env
from training.trainer import ProgressEvent, TrainingCancelled, TrainingError

__all__ = [
    "JobRecorder",
    "execute_spec",
    "run_training_job",
    "run_with_recorder",
    "split_upload",
]

log = logging.getLogger("cpflow.jobs")

PHASES = ("loading", "training", "evaluating", "plotting", "publishing")
"""What a running job is doing, in order (the record's ``phase``)."""
_TRAINER_PHASES = {
    "train": "training",
    "validate": "training",
    "evaluate": "evaluating",
    "done": "evaluating",  # the trainer's last event, once the test split is scored
}

PROGRESS_INTERVAL_S = 1.0
"""Least seconds between two progress writes to the record (validation events always go)."""


CANCEL_POLL_S = 0.5
"""Least seconds between two looks at the job's cancel flag (the trainer asks every step)."""

FINISH_RETRY_S = 60.0
"""How long a finished job keeps trying to record its outcome while Redis is unreachable."""


_SET_IF_RUNNING_LUA = """
if redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""


class JobRecorder:
    """Worker side of one job record: status changes, heartbeat, progress, cancel flag."""

    def __init__(self, connection: Any, runtime: dict[str, Any]) -> None:
        self.connection = connection
        self.key = runtime["record_key"]
        self.heartbeat_s = float(runtime.get("heartbeat_s", 5.0))
        self.retention_s = int(runtime.get("retention_s", 7 * 24 * 3600))
        self._parent = os.getppid()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_progress = 0.0
        self._last_cancel_check = -CANCEL_POLL_S
        self._cancelled = False
        self._phase: str | None = None
        self.orphaned = False
        self.record_lost = False
        self._set_if_running = connection.register_script(_SET_IF_RUNNING_LUA)

    # -- status -------------------------------------------------------------------------
    def _set_if(self, allowed: set[str], fields: dict[str, str]) -> bool:
        """Write ``fields`` only while the status is one of ``allowed`` (atomic)."""
        done = False

        def apply(pipe: Any) -> None:
            nonlocal done
            current = pipe.hget(self.key, "status")
            done = current is not None and current.decode() in allowed
            if done:
                pipe.multi()
                pipe.hset(self.key, mapping=fields)
                if fields.get("status") in ("succeeded", "failed", "cancelled"):
                    pipe.expire(self.key, self.retention_s)

        self.connection.transaction(apply, self.key)
        return done

    def start(self) -> bool:
        """queued -> running; False when the job was cancelled (or failed) meanwhile."""
        if self.cancel_requested():
            self.finish("cancelled", error="cancelled before it started")
            return False
        now = repr(time.time())
        ok = self._set_if(
            {"queued"},
            {
                "status": "running",
                "started_at": now,
                "heartbeat_at": now,
                "worker": f"{socket.gethostname()}:{os.getpid()}",
            },
        )
        if ok:
            self._thread = threading.Thread(target=self._beat, name="job-heartbeat", daemon=True)
            self._thread.start()
        return ok

    def finish(self, status: str, *, result: dict | None = None, error: str | None = None) -> bool:
        """running (or queued) -> a final status, stopping the heartbeat."""
        self._stop.set()
        fields = {"status": status, "finished_at": repr(time.time())}
        if result is not None:
            fields["result"] = json.dumps(result)
        if error is not None:
            fields["error"] = error
        # The outcome matters most (a model may be published): ride out a short Redis outage.
        deadline = time.monotonic() + FINISH_RETRY_S
        while True:
            try:
                return self._set_if({"queued", "running"}, fields)
            except RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    # -- heartbeat, progress, cancel ----------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if os.getppid() != self._parent:
                self.orphaned = True  # the worker died; the horse must not go on alone
                return
            try:
                self._write_if_running("heartbeat_at", repr(time.time()))
            except RedisError as exc:  # a blip: the lease tolerates a few missed beats
                log.warning("heartbeat failed: %s", exc)

    def _write_if_running(self, field: str, value: str) -> None:
        """Set one field while the record says running. Never recreates an expired record;
        a record that left "running" (lease expired, deleted) tells the job to stop."""
        if not self._set_if_running(keys=[self.key], args=[field, value]):
            self.record_lost = True

    def progress(self, values: dict[str, Any], *, force: bool = False) -> None:
        """Write progress at most every PROGRESS_INTERVAL_S seconds (or now if ``force``)."""
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        try:
            self._write_if_running("progress", json.dumps(values))
        except RedisError as exc:  # progress is best effort
            log.warning("progress write failed: %s", exc)

    def stage(self, phase: str, details: dict[str, Any] | None = None) -> None:
        """Record the job's phase (one of PHASES) and, when the run has resolved its settings,
        what it trains with (``details["resolved"]``); best effort, as progress."""
        try:
            if details and "resolved" in details:
                self._write_if_running("resolved", json.dumps(details["resolved"]))
            if phase != self._phase:
                self._phase = phase
                self._write_if_running("phase", phase)
        except RedisError as exc:
            log.warning("phase write failed: %s", exc)

    def cancel_requested(self) -> bool:
        try:
            return self.connection.hget(self.key, "cancel_requested") == b"1"
        except RedisError:
            return False  # keep training through a Redis blip

    def should_stop(self) -> bool:
        """Polled by the trainer every iteration; asks Redis at most every CANCEL_POLL_S."""
        if self.orphaned or self.record_lost:
            return True
        now = time.monotonic()
        if now - self._last_cancel_check >= CANCEL_POLL_S:
            self._last_cancel_check = now
            self._cancelled = self.cancel_requested()
        return self._cancelled


def progress_values(event: ProgressEvent) -> dict[str, Any]:
    """What a job record's progress field holds (a subset of the trainer's event)."""
    return {
        "iteration": int(event.iteration),
        "total": None if event.total is None else int(event.total),
        "val_nll": event.val_nll,
        "seconds_per_iteration": event.seconds_per_iteration,
        "eta_s": event.eta_s,
        "loss": event.loss,
        "curve": event.curve,
    }


def execute_spec(
    spec: dict[str, Any],
    *,
    progress: Callable[[ProgressEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_stage: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Load the data, train, publish; return ``{model, version, test_nll}``. ``on_stage``
    hears the pipeline's stages (``training.pipeline.train_and_publish``).

    Raises ``training.trainer.TrainingCancelled`` when ``should_stop`` fires (nothing published).
    """
    from model_store import open_store
    from training.pipeline import train_and_publish

    runtime = spec.get("runtime", {})
    settings = TrainingSettings()
    where = settings.store_location() or runtime.get("store_dir")
    if not where:
        raise RuntimeError("no model store: set CPFLOW_STORE_URL or CPFLOW_STORE_DIR")
    cache = None if settings.cache_dir is None else str(settings.cache_dir)
    store = open_store(where, cache)
    training = dict(spec.get("training", {}))
    training.setdefault("device", settings.device or "auto")
    model = {k: v for k, v in spec.get("model", {}).items() if k != "dim"}
    dataset = spec["dataset"]
    published = train_and_publish(
        _dataset_source(dataset, store),
        spec["model_name"],
        store,
        flow_config=model,
        train_config=training,
        num_samples=dataset.get("num_samples"),
        dataset_seed=dataset.get("seed", 0),
        progress=progress,
        should_stop=should_stop,
        job_id=runtime.get("job_id"),
        make_plots=bool(spec.get("plots", True)),
        context_columns=dataset.get("context_columns") if "builtin" in dataset else None,
        tenant=runtime.get("model_tenant"),
        preset=spec.get("preset"),
        on_stage=on_stage,
    )
    return {} if published is None else _result(published)  # None: not rank 0 of a group


def _result(published: Any) -> dict[str, Any]:
    """What a job reports: the published name and version, and its test NLL."""
    metrics = published.manifest.get("training", {}).get("metrics", {})
    return {
        "model": published.name,
        "version": published.version,
        "test_nll": metrics.get("test_nll"),
    }


def split_upload(
    array: np.ndarray,
    *,
    name: str,
    sha256: str,
    seed: int = 0,
    columns: list[str] | None = None,
    options: TableOptions | None = None,
    val: Holdout | None = None,
    test: Holdout | None = None,
) -> DatasetSplits:
    """An uploaded array, checked (model_store.data_checks: a data set stored before the
    checks existed may still be degenerate) and split as cpflow-train splits files: seeded,
    by the job's fractions, or with its own validation / test data sets.

    ``sha256`` stays the data set's id in the store, so the manifest names the exact upload.
    """
    x = np.ascontiguousarray(array, dtype=np.float32)
    splits = table_splits(
        name, x, columns, options or TableOptions(), val=val, test=test, seed=seed,
        meta={"source": "upload", "rows": len(x), "seed": seed},
    )  # fmt: skip
    return dataclasses.replace(splits, sha256=sha256)


def _stored_holdout(store: Any, dataset_id: str | None) -> Holdout | None:
    """A validation or test data set of a job, from the store."""
    if dataset_id is None:
        return None
    record = store.datasets.get(dataset_id)
    source = f"data set {record.name!r} ({record.id[:12]})"
    return Holdout(store.datasets.load(dataset_id), record.column_names, source)


def _dataset_source(dataset: dict[str, Any], store: Any) -> Any:
    """The pipeline's data argument: a built-in name, or the uploaded array's splits (data
    and context columns when the spec names context columns)."""
    if "builtin" in dataset:
        return dataset["builtin"]
    record = store.datasets.get(dataset["id"])
    if dataset.get("context_columns") is not None:
        from training.datasets.conditional import conditional_splits

        return conditional_splits(
            store.datasets.load(dataset["id"]),
            dataset["context_columns"],
            name=record.name,
            seed=dataset.get("seed", 0),
            sha256=record.sha256,
            columns=record.column_names,
        )
    options = TableOptions(
        val_fraction=dataset.get("val_fraction"), test_fraction=dataset.get("test_fraction")
    )
    return split_upload(
        store.datasets.load(dataset["id"]),
        name=record.name,
        sha256=record.sha256,
        seed=dataset.get("seed", 0),
        columns=record.column_names,
        options=options,
        val=_stored_holdout(store, dataset.get("validation")),
        test=_stored_holdout(store, dataset.get("test")),
    )


def run_training_job(spec: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point: run one training job spec, keeping its record up to date."""
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        raise RuntimeError("run_training_job must run inside an RQ worker")
    threads = TrainingSettings().worker_torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)
    recorder = JobRecorder(job.connection, spec["runtime"])
    return run_with_recorder(spec, recorder)


def run_with_recorder(spec: dict[str, Any], recorder: JobRecorder) -> dict[str, Any]:
    """The body of :func:`run_training_job`, usable without RQ (tests, tools)."""
    if not recorder.start():
        return {"status": "cancelled"}

    def on_progress(event: ProgressEvent) -> None:
        recorder.stage(_TRAINER_PHASES.get(event.phase, "training"))
        recorder.progress(progress_values(event), force=event.phase != "train")

    processes = int(spec.get("resources", {}).get("processes", 1))
    try:
        if processes > 1:
            result = run_group(spec, recorder, processes)
        else:
            result = execute_spec(
                spec,
                progress=on_progress,
                should_stop=recorder.should_stop,
                on_stage=recorder.stage,
            )
    except TrainingCancelled as exc:
        if recorder.record_lost:
            log.warning("job record left 'running' (lease expired?); stopped without publishing")
            return {"status": "abandoned"}
        if recorder.orphaned:
            recorder.finish("failed", error="worker lost: the worker process died mid-job")
            return {"status": "failed"}
        recorder.finish("cancelled", error=f"cancelled by request at iteration {exc.iteration}")
        return {"status": "cancelled"}
    except BaseException as exc:
        recorder.finish("failed", error=_error_message(exc, spec))
        raise
    recorder.finish("succeeded", result=result)
    return {"status": "succeeded", **result}


def run_group(spec: dict[str, Any], recorder: JobRecorder, processes: int) -> dict[str, Any]:
    """Train ``spec`` as a torchrun group of ``processes`` processes (training.job_group),
    relaying rank 0's progress to the job record; a cancel request (or a lost record) ends
    the whole group. Returns rank 0's result."""
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    with tempfile.TemporaryDirectory(prefix="cpflow-job-") as tmp:
        spec_path, log_path = Path(tmp) / "spec.json", Path(tmp) / "stderr.log"
        spec_path.write_text(json.dumps(spec))
        threads = str(TrainingSettings().worker_torch_threads or 1)
        job_id = str(spec.get("runtime", {}).get("job_id", "job"))
        with open(log_path, "w") as log_file:
            proc = launch(
                processes, "training.job_group", [str(spec_path), job_id],
                stdout=subprocess.PIPE, stderr=log_file, text=True, start_new_session=True,
                preexec_fn=lambda: die_with_parent(signal.SIGTERM),
                env=child_env(OMP_NUM_THREADS=threads),
            )  # fmt: skip
        reader = threading.Thread(target=_read_events, args=(proc, events))
        reader.start()
        pids: list[int] = [proc.pid]
        result, iteration = None, 0
        while reader.is_alive() or not events.empty():
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                event = {}
            if "pids" in event:
                pids = [proc.pid, *event["pids"]]
                recorder.progress({"iteration": 0, "processes": pids}, force=True)
            elif "stage" in event:
                recorder.stage(event["stage"], event.get("details"))
            elif "progress" in event:
                recorder.stage(_TRAINER_PHASES.get(event.get("phase", "train"), "training"))
                iteration = event["progress"].get("iteration", iteration)
                values = {**event["progress"], "processes": pids}
                recorder.progress(values, force=event["force"])
            elif "result" in event:
                result = event["result"]
            if recorder.should_stop():
                _end_group(proc)
                reader.join()
                raise TrainingCancelled(iteration)
        code = proc.wait()
        if code != 0 or result is None:
            tail = log_path.read_text()[-2000:]
            raise TrainingError(
                f"the {processes}-process training group exited with {code}: {tail}"
            )
    return result


def _read_events(proc: subprocess.Popen[str], events: queue.Queue[dict[str, Any]]) -> None:
    assert proc.stdout is not None  # started with stdout=PIPE
    for line in proc.stdout:
        event = parse_event(line)
        if event is not None:
            events.put(event)


def _end_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to torchrun's process group (torchrun and every rank), SIGKILL after grace."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _error_message(exc: BaseException, spec: dict[str, Any]) -> str:
    name = type(exc).__name__
    if name == "JobTimeoutException":
        limit = spec.get("runtime", {}).get("timeout_s")
        return (
            f"the job ran past its time limit of {limit} s; submit with a larger timeout_s "
            "or fewer iterations"
        )
    text = str(exc) or name
    return f"{name}: {text}"
