"""Prometheus metrics of ``pyimgcls serve`` (one registry per server, so tests and embedders can run
several in a process). Names: ``pyimgcls_requests_total{endpoint,status}``,
``pyimgcls_request_duration_seconds{endpoint}``, ``pyimgcls_batch_size`` (real rows per batch, before
padding), ``pyimgcls_batch_duration_seconds``, ``pyimgcls_queue_depth``, ``pyimgcls_model_busy``,
``pyimgcls_images_total``, ``pyimgcls_images_per_second`` (over the last ``RATE_WINDOW_S`` seconds), ``pyimgcls_model_load_seconds``,
``pyimgcls_model_warmup_seconds``, ``pyimgcls_model_ready``."""
from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

RATE_WINDOW_S = 10.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    def __init__(self, batch_sizes: tuple[int, ...], queue_depth, busy, ready, load_seconds, warmup_seconds):
        disable_created_metrics()   # the *_created series (process start times) only add noise here
        r = self.registry = CollectorRegistry()
        self.requests = Counter("pyimgcls_requests", "HTTP requests answered, by endpoint and status code",
                                ("endpoint", "status"), registry=r)
        self.latency = Histogram("pyimgcls_request_duration_seconds", "time from request to response, by endpoint",
                                 ("endpoint",), buckets=LATENCY_BUCKETS, registry=r)
        # Buckets at the padded sizes: every batch lands in the bucket of the shape the kernels ran.
        self.batch_size = Histogram("pyimgcls_batch_size", "images per model batch (before padding)",
                                    buckets=tuple(float(s) for s in batch_sizes), registry=r)
        self.batch_seconds = Histogram("pyimgcls_batch_duration_seconds", "model time per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("pyimgcls_images", "images classified", registry=r)
        Gauge("pyimgcls_queue_depth", "requests waiting for the model", registry=r).set_function(queue_depth)
        Gauge("pyimgcls_model_busy", "1 while a batch runs", registry=r).set_function(lambda: 1.0 if busy() else 0.0)
        Gauge("pyimgcls_images_per_second", f"images classified per second over the last {RATE_WINDOW_S:g} s",
              registry=r).set_function(self.rate)
        Gauge("pyimgcls_model_load_seconds", "time to load the checkpoint and build the model",
              registry=r).set_function(load_seconds)
        Gauge("pyimgcls_model_warmup_seconds", "time to warm up every padded batch size",
              registry=r).set_function(warmup_seconds)
        Gauge("pyimgcls_model_ready", "1 once the model is loaded and warmed up",
              registry=r).set_function(lambda: 1.0 if ready() else 0.0)
        self._recent: collections.deque = collections.deque()
        self._lock = threading.Lock()

    def batch(self, rows: int, seconds: float) -> None:
        """Called by the worker thread after each batch."""
        self.batch_size.observe(rows)
        self.batch_seconds.observe(seconds)
        self.images.inc(rows)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, rows))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return sum(r for _, r in self._recent) / RATE_WINDOW_S

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
