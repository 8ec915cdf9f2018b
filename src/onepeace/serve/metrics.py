"""Prometheus metrics of one server (``GET /metrics``, the Prometheus text format).

Each app has its own ``CollectorRegistry`` (several apps in one process, as in the tests, do not
collide). The names, all prefixed ``onepeace_``:

* ``onepeace_requests_total{route, method, status}`` — answered requests (route: the endpoint's
  template, e.g. ``/media/{item_id}``; ``other`` for unknown paths)
* ``onepeace_request_duration_seconds{route}`` — a histogram of the time to the response's start
* ``onepeace_requests_in_flight`` — requests being served now
* ``onepeace_rejected_requests_total{reason}`` — 503s of load shedding: ``queue_full`` (the
  batcher's queue is at ``--max-queue``), ``too_many_requests`` (``--max-in-flight`` requests are
  being served)
* ``onepeace_queue_depth`` — inputs waiting for a forward pass
* ``onepeace_batch_size{modality}`` and ``onepeace_batch_duration_seconds{modality}`` — histograms
  of the rows and the time of each forward pass
* ``onepeace_model_load_seconds`` — how long loading the model took (when the server knows)
"""

from __future__ import annotations

from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's metrics in a registry of their own (needs ``prometheus-client``)."""

    def __init__(self, queue_depth: Callable[[], float], model_load_s: float | None = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("onepeace_requests", "HTTP requests answered, by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("onepeace_request_duration_seconds", "time from a request's arrival to its "
                                 "response's start, by route", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("onepeace_requests_in_flight", "requests being served now", registry=r)
        self.rejected = Counter("onepeace_rejected_requests", "requests refused with 503 to shed load, by reason",
                                ["reason"], registry=r)
        for reason in ("queue_full", "too_many_requests"):
            self.rejected.labels(reason)
        depth = Gauge("onepeace_queue_depth", "inputs waiting for a forward pass", registry=r)
        depth.set_function(queue_depth)
        self.batch_size = Histogram("onepeace_batch_size", "rows per forward pass, by modality", ["modality"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_time = Histogram("onepeace_batch_duration_seconds", "time of one forward pass, by modality",
                                    ["modality"], buckets=LATENCY_BUCKETS, registry=r)
        load = Gauge("onepeace_model_load_seconds", "seconds it took to load the model (NaN: not known)",
                     registry=r)
        load.set(float("nan") if model_load_s is None else float(model_load_s))

    def observe_batch(self, modality: str, rows: int, seconds: float) -> None:
        self.batch_size.labels(modality).observe(rows)
        self.batch_time.labels(modality).observe(seconds)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def make_metrics(queue_depth: Callable[[], float], model_load_s: float | None = None) -> Metrics | None:
    """:class:`Metrics`, or None where ``prometheus-client`` is not installed (``/metrics`` then
    answers 404 saying so)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return None
    return Metrics(queue_depth, model_load_s)
