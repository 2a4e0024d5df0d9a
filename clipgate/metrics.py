"""Prometheus metrics, one registry per app (single process: never prometheus-client's
multiprocess mode). Names are `clipgate_`-prefixed, in seconds, counters end in `_total`, and a
route is labelled by its template (`/api/predict/nlp/{project}/{endpoint}`), never its raw path.

`Metrics.disabled()` has the same methods and records nothing (`server.metrics = false`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from clipgate.canonical import ModelCard
from clipgate.errors import (
    ClipgateError,
    DeadlineExceeded,
    HeaderTooLarge,
    InvalidRequest,
    MethodNotAllowed,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    RouteNotFound,
    Unauthorized,
    UnknownModel,
    UnsupportedMediaType,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST
KINDS = ("image", "text")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (2, 4, 8, 16, 32, 48, 64, 77, 128, 256, 512)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REJECTION_REASONS = ("overloaded", "timeout", "too_large", "invalid", "unauthorized", "not_ready", "client_gone")


def duration_buckets(timeout_s: float) -> tuple[float, ...]:
    """Request durations up to the request deadline."""
    steps = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
    return tuple(s for s in steps if s < timeout_s) + (timeout_s,)


def rejection_reason(err: ClipgateError) -> str | None:
    """Why a request was refused, as `clipgate_rejections_total{reason}` names it (None: a fault)."""
    reasons: tuple[tuple[type[ClipgateError] | tuple[type[ClipgateError], ...], str], ...] = (
        ((DeadlineExceeded, RequestTimeout), "timeout"),
        (Overloaded, "overloaded"),
        ((PayloadTooLarge, HeaderTooLarge), "too_large"),
        (Unauthorized, "unauthorized"),
        (NotReady, "not_ready"),
        ((InvalidRequest, UnsupportedMediaType, MethodNotAllowed, RouteNotFound, UnknownModel), "invalid"),
    )
    for kinds, reason in reasons:
        if isinstance(err, kinds):
            return reason
    return None


class Metrics:
    """What clipgate measures. Gauges that mirror live state read it when scraped."""

    def __init__(self, *, request_timeout_s: float, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "clipgate_requests", "Requests answered, by protocol, route template and status.",
            ["protocol", "route", "status"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "clipgate_request_duration_seconds", "Time from the request's arrival to its answer.",
            ["protocol", "route"], buckets=duration_buckets(request_timeout_s), registry=r,
        )  # fmt: skip
        self.rejections = Counter("clipgate_rejections", "Requests refused, by reason.", ["reason"], registry=r)
        self.inflight = Gauge(
            "clipgate_inflight_requests", "Embedding requests being read, decoded or served.", registry=r
        )
        self.queue_depth = Gauge(
            "clipgate_queue_depth", "Items queued or being prepared for the model, by kind.", ["kind"], registry=r
        )
        self.queue_wait = Histogram(
            "clipgate_queue_wait_seconds", "Time an item waited in the queue before its batch ran.",
            ["kind"], buckets=FAST_BUCKETS + (5.0, 10.0, 30.0, 60.0), registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "clipgate_batch_size", "Items per model batch.", ["kind"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "clipgate_batch_seconds", "Model time per batch.", ["kind"], buckets=FAST_BUCKETS + (5.0, 10.0), registry=r
        )
        self.items = Counter("clipgate_items", "Items embedded, by kind.", ["kind"], registry=r)
        self.decode = Histogram(
            "clipgate_decode_seconds", "Time to decode and preprocess one image.", buckets=FAST_BUCKETS, registry=r
        )
        self.text_tokens = Histogram(
            "clipgate_text_tokens", "Tokens per text, end markers included.", buckets=TOKEN_BUCKETS, registry=r
        )
        self.model_info = Gauge(
            "clipgate_model_info", "The served model (always 1).", ["model", "alias", "device", "dtype", "backend"],
            registry=r,
        )  # fmt: skip
        self.faults = Counter("clipgate_faults_injected", "Faults injected (testing), by kind.", ["kind"], registry=r)
        self.ready = Gauge(
            "clipgate_ready", "1 when the server is ready (loaded, warm, not draining), else 0.", registry=r
        )
        for reason in REJECTION_REASONS:  # every reason shows from the start, at 0
            self.rejections.labels(reason)
        for kind in KINDS:
            self.items.labels(kind)

    @classmethod
    def disabled(cls) -> Metrics:
        return cls(request_timeout_s=60.0, enabled=False)

    def watch(
        self, *, inflight: Callable[[], int], ready: Callable[[], bool], queue_depth: Callable[[str], int]
    ) -> None:
        """Gauges read from live state when scraped."""
        self.inflight.set_function(inflight)
        self.ready.set_function(lambda: float(ready()))
        for kind in KINDS:
            self.queue_depth.labels(kind).set_function(lambda kind=kind: queue_depth(kind))  # type: ignore[misc]

    def model_loaded(self, card: ModelCard, backend: str) -> None:
        self.model_info.labels(card.name, card.alias, card.device, card.dtype, backend).set(1)

    def request_done(self, protocol: str, route: str, status: int, seconds: float) -> None:
        if self.enabled:
            self.requests.labels(protocol, route, str(status)).inc()
            self.duration.labels(protocol, route).observe(seconds)

    def rejected(self, reason: str) -> None:
        if self.enabled:
            self.rejections.labels(reason).inc()

    def batch_done(self, kind: str, size: int, seconds: float, waits: Sequence[float]) -> None:
        if self.enabled:
            self.batch_size.labels(kind).observe(size)
            self.batch_seconds.labels(kind).observe(seconds)
            self.items.labels(kind).inc(size)
            queue_wait = self.queue_wait.labels(kind)
            for wait in waits:
                queue_wait.observe(wait)

    def fault_injected(self, kind: str) -> None:
        if self.enabled:
            self.faults.labels(kind).inc()

    def decoded(self, seconds: float) -> None:
        if self.enabled:
            self.decode.observe(seconds)

    def tokenized(self, lengths: Sequence[int]) -> None:
        if self.enabled:
            for length in lengths:
                self.text_tokens.observe(length)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
