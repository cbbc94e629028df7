"""Prometheus metrics: what a server owner graphs and alerts on. Discord-free.

One :class:`Metrics` per bot, on the registry the bot hands in (no global state); ``bot.py`` serves
that registry at ``/metrics`` when ``METRICS_PORT`` is set. The names::

    depth2img_jobs_total{outcome}              jobs by final state: delivered, failed, cancelled
    depth2img_requests_rejected_total{reason}  refused before any API call (bad input, limits, …)
    depth2img_api_errors_total{kind}           jobs that ended on an API-side error, by its kind
    depth2img_ack_seconds                      command received → acknowledged (Discord's limit: 3 s)
    depth2img_acks_total{outcome}              acknowledgements: acknowledged, or expired (Discord no
                                               longer knew the interaction when the bot answered)
    depth2img_job_seconds                      command received → member told (image or message)
    depth2img_api_seconds                      submission → images ready at the API
    depth2img_jobs_in_flight                   jobs admitted and not finished
    depth2img_queue_depth                      jobs waiting for a free API slot
    depth2img_jobs_resumed_total               jobs resumed after a restart or taken over from a process that stopped
"""

from __future__ import annotations

import contextlib
import functools
import math
import shutil
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from . import errors

_ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0)
_JOB_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0)

# What kind of failure a job ended on, for depth2img_api_errors_total, by the error's class (or the
# nearest base class listed). Matched by name, so that reloading the extension (discord.py re-imports
# it) cannot break the match.
_API_KINDS: dict[str, str] = {
    errors.AuthenticationError.__name__: "auth",
    errors.InsufficientCreditsError.__name__: "credits",
    errors.RateLimitError.__name__: "rate_limit",
    errors.SourceImageUnreachable.__name__: "source_unreachable",
    errors.BadRequestError.__name__: "bad_request",
    errors.ServerError.__name__: "server",
    errors.APIStatusError.__name__: "status",
    errors.APITimeoutError.__name__: "timeout",
    errors.APIConnectionError.__name__: "connection",
    errors.MalformedResponseError.__name__: "malformed",
    errors.JobFailed.__name__: "job_failed",
    errors.JobTimedOut.__name__: "job_timeout",
    errors.OutputUnavailable.__name__: "output",
}


def api_error_kind(exc: BaseException) -> str | None:
    for cls in type(exc).__mro__:
        if cls.__name__ in _API_KINDS:
            return _API_KINDS[cls.__name__]
    return None


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, data_dir: Path | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Counter("depth2img_jobs", "Jobs by final state.", ["outcome"], registry=r)
        self.rejected = Counter(
            "depth2img_requests_rejected", "Requests refused before any API call.", ["reason"], registry=r
        )
        self.api_errors = Counter(
            "depth2img_api_errors", "Jobs that ended on an API-side error, by kind.", ["kind"], registry=r
        )
        self.resumed = Counter(
            "depth2img_jobs_resumed", "Jobs resumed after a restart or taken over.", registry=r
        )
        self.acks = Counter("depth2img_acks", "Acknowledgements by outcome.", ["outcome"], registry=r)
        for outcome in ("acknowledged", "expired"):
            self.acks.labels(outcome=outcome)
        self.ack_seconds = Histogram(
            "depth2img_ack_seconds", "Command received to acknowledged.", buckets=_ACK_BUCKETS, registry=r
        )
        self.job_seconds = Histogram(
            "depth2img_job_seconds", "Command received to the member told.", buckets=_JOB_BUCKETS, registry=r
        )
        self.api_seconds = Histogram(
            "depth2img_api_seconds",
            "Submission to images ready at the API.",
            buckets=_JOB_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("depth2img_jobs_in_flight", "Jobs admitted and not finished.", registry=r)
        self.queue_depth = Gauge("depth2img_queue_depth", "Jobs waiting for a free API slot.", registry=r)
        self.output_bytes = Gauge(
            "depth2img_output_bytes_held",
            "Bytes of output images held (downloading, or waiting for delivery): at most OUTPUT_MEMORY_BYTES.",
            registry=r,
        )
        # The disk that holds the pictures and the SQLite ledger, read when scraped: an alert can come
        # before it is full (then members' pictures are refused: see errors.StorageFull)
        self.disk_free = Gauge(
            "depth2img_data_disk_free_bytes",
            "Free bytes on the disk that holds BOT_DATA_DIR (its pictures and the SQLite ledger).",
            registry=r,
        )
        if data_dir is not None:
            self.disk_free.set_function(functools.partial(_free_bytes, data_dir))
        for outcome in ("delivered", "failed", "cancelled"):
            self.jobs.labels(outcome=outcome)  # present from the start, at 0

    def watch(
        self,
        in_flight: Callable[[], float],
        queue_depth: Callable[[], float],
        output_bytes: Callable[[], float] = lambda: 0.0,
    ) -> None:
        """The gauges read the admission state and the output budget when scraped."""
        self.in_flight.set_function(in_flight)
        self.queue_depth.set_function(queue_depth)
        self.output_bytes.set_function(output_bytes)

    def close(self) -> None:
        """Take this extension's metrics off the registry (it is the bot's: a reload registers anew)."""
        for collector in [c for c in vars(self).values() if isinstance(c, Counter | Gauge | Histogram)]:
            with contextlib.suppress(KeyError):
                self.registry.unregister(collector)

    def job_finished(self, outcome: str, error: BaseException | None) -> None:
        self.jobs.labels(outcome=outcome).inc()
        kind = api_error_kind(error) if error is not None else None
        if kind is not None:
            self.api_errors.labels(kind=kind).inc()


def _free_bytes(folder: Path) -> float:
    """Free bytes for the bot's user where ``folder`` is (NaN when it cannot be told)."""
    try:
        return float(shutil.disk_usage(folder).free)
    except OSError:
        return math.nan
