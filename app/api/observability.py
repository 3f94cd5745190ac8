"""What operators see: request ids, structured log lines, audit lines and Prometheus metrics.

Every log line (ours and uvicorn's) is one JSON object with a UTC timestamp, the level, the logger,
the message and the id of the request being served (``X-Request-ID``, accepted from the client when
it is a short token, generated otherwise, echoed in the response and in every error body).  State
changes (alias moves, job submissions and cancellations) also write an ``audit`` line saying who
(scope, client address) did what.  ``/metrics`` exposes counters and histograms per app instance
(a registry of its own, so several apps in one process do not collide).  With ``serve --workers N``
each worker process answers with its own figures.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from datetime import datetime, timezone

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("galaxypaint")
audit_log = logging.getLogger("galaxypaint.audit")

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(header: str | None) -> str:
    """The client's ``X-Request-ID`` when it is a plain short token, else a new one (never echo junk)."""
    if header and _REQUEST_ID_RE.match(header):
        return header
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
                 "request_id": REQUEST_ID.get()}
        entry.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in (getattr(record, "fields", {}) or {}).items())
        return f"{super().format(record)} request_id={REQUEST_ID.get()} {fields}".rstrip()


def configure_logging(json_lines: bool = True, level: int = logging.INFO) -> None:
    """One handler on stderr for galaxypaint's and uvicorn's loggers (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else
                         _PlainFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.set_name("galaxypaint")
    for name in ("galaxypaint", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if h.get_name() != "galaxypaint"] + [handler]
        logger.propagate = False
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)
    # our middleware writes one access line per request, with the request id: uvicorn's is redundant
    logging.getLogger("uvicorn.access").disabled = True


def audit(event: str, **fields: object) -> None:
    """One audit line for a state change (who, what, on which object)."""
    audit_log.info(event, extra={"fields": {"audit": True, "event": event, **fields}})


class Metrics:
    """The service's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("galaxypaint_http_requests_total", "HTTP requests answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("galaxypaint_http_request_seconds", "HTTP request latency", ["route"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.predictions = Counter("galaxypaint_predictions_total", "halos predicted", ["target", "transport"],
                                   registry=self.registry)
        self.batches = Counter("galaxypaint_batches_total", "prediction calls run by the dynamic batcher "
                               "(each serving one or more queued requests)", registry=self.registry)
        self.batches_merged = Counter("galaxypaint_batches_merged_total", "batcher calls that served two or more "
                                      "requests at once", registry=self.registry)
        self.batch_requests = Histogram("galaxypaint_batch_requests", "requests served per batcher call",
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.jobs = Gauge("galaxypaint_jobs", "jobs in the job store by status", ["status"], registry=self.registry)
        self.loaded_models = Gauge("galaxypaint_loaded_models", "onnxruntime sessions loaded",
                                   registry=self.registry)
        self.job_disk_bytes = Gauge("galaxypaint_job_disk_bytes", "bytes used by job inputs and results",
                                    registry=self.registry)
