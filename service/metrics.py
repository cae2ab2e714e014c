"""Prometheus metrics of the service, kept in a registry owned by each app instance.

A registry per app (not the global default) lets tests build many apps in one process.

Several worker processes (``cpflow-serve --workers N``): every process writes its series to
files in one folder (prometheus_client's multiprocess mode; ``CPFLOW_METRICS_DIR``, with
``PROMETHEUS_MULTIPROC_DIR`` naming the same folder, both set up by cpflow-serve), and a
scrape answered by any process sums them all, so counters never go backwards between scrapes.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class ServiceMetrics:
    """All series the service exports; one instance per app."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        if multiprocess_dir is not None and values.ValueClass is values.MutexValue:
            raise RuntimeError(
                f"CPFLOW_METRICS_DIR is {multiprocess_dir} but prometheus_client is not in "
                "multiprocess mode: set PROMETHEUS_MULTIPROC_DIR to the same folder before the "
                "service starts (cpflow-serve does both)"
            )
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        self._request_series(self.registry)
        self._model_series(self.registry)
        self._drift_series(self.registry)

    def _request_series(self, r: CollectorRegistry) -> None:
        """Requests, latency, rows and inversion figures."""
        self.requests = Counter(
            "cpflow_http_requests",
            "HTTP requests handled, by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "cpflow_http_request_duration_seconds",
            "HTTP request latency by route template and model.",
            ["route", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = Counter(
            "cpflow_rows_scored",
            "Input rows processed (log_prob, transport) or samples drawn, by model and operation.",
            ["model", "operation"],
            registry=r,
        )
        self.inference_requests = Counter(
            "cpflow_inference_requests",
            "Inference requests by model, operation and the runtime that answers them "
            "(onnx: onnxruntime over the model's export; torch).",
            ["model", "operation", "runtime"],
            registry=r,
        )
        self.inference_seconds = Histogram(
            "cpflow_inference_pass_seconds",
            "Duration of one computation pass (a coalesced batch, or one conditional request) "
            "of exact log_prob or forward transport, by model, operation and runtime.",
            ["model", "operation", "runtime"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inversion_iterations = Histogram(
            "cpflow_inversion_iterations",
            "Solver iterations of one inversion call (sample, transport inverse).",
            ["model"],
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000),
            registry=r,
        )
        self.inversion_residual = Histogram(
            "cpflow_inversion_max_residual",
            "Largest residual max|f(x)-z| of one inversion call.",
            ["model"],
            buckets=(1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
            registry=r,
        )
        self.inversion_unconverged = Counter(
            "cpflow_inversion_unconverged_rows",
            "Rows whose inversion did not reach the tolerance.",
            ["model"],
            registry=r,
        )

    def _model_series(self, r: CollectorRegistry) -> None:
        """Loaded models, loads and verifications, micro-batching."""
        self.loaded_models = Gauge(
            "cpflow_loaded_models",
            "Model versions held in memory (over every live worker process).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_loads = Counter(
            "cpflow_model_loads",
            "Model loads from the store, by outcome (ok, not_found, corrupt, timeout, error).",
            ["outcome"],
            registry=r,
        )
        self.model_verifications = Counter(
            "cpflow_model_verifications",
            "Re-verifications of a stored version's files, by outcome (ok, corrupt).",
            ["outcome"],
            registry=r,
        )
        self.replica_disagreements = Gauge(
            "cpflow_replica_view_disagreements",
            "Loaded versions this replica serves with other weights than another live replica "
            "(see /readyz replicas); 0 when the views agree.",
            registry=r,
            multiprocess_mode="max",
        )
        self.batch_rows = Histogram(
            "cpflow_microbatch_rows",
            "Rows per coalesced forward pass of the micro-batcher.",
            ["model", "operation"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
            registry=r,
        )
        self.batch_requests = Histogram(
            "cpflow_microbatch_requests",
            "Requests merged into one forward pass by the micro-batcher.",
            ["model", "operation"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )

    def _drift_series(self, r: CollectorRegistry) -> None:
        """Drift of each model version's recent scores from its held-out scores (the latest
        value any worker process computed; service.drift)."""

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["model", "version"], registry=r,
                         multiprocess_mode="livemostrecent")  # fmt: skip

        self.drift_statistic = gauge(
            "cpflow_drift_ks_statistic",
            "Two-sample KS statistic of the recent log-densities against the held-out ones.",
        )
        self.drift_p_value = gauge("cpflow_drift_p_value", "p-value of that KS test.")
        self.drift_mean_shift = gauge(
            "cpflow_drift_mean_shift", "Mean recent log-density minus the held-out mean."
        )
        self.drift_window_rows = gauge("cpflow_drift_window_rows", "Rows in the drift window.")

    def render(self) -> bytes:
        """The Prometheus text exposition of every series (of every worker process)."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=str(self.multiprocess_dir))
        return generate_latest(merged)

    def close(self) -> None:
        """This process is ending: drop its live gauges from the merged view."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), str(self.multiprocess_dir))
