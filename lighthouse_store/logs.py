"""Logs: one JSON object per line (or one readable line, ``--log-format text``).

Fields
======

Every line has ``timestamp`` (UTC, RFC 3339 with milliseconds:
``2026-12-02T15:07:54.106Z``), ``level`` (``debug`` ... ``critical``),
``component`` (the logger: ``lighthouse_store.server``, ...) and
``message``; then, when known:

- ``worker``: the worker's index, on every line of a worker process
  (``configure``'s ``fields``);
- ``trace_id`` and ``span_id``: the current OpenTelemetry span's, when it is
  valid (a server span exists only when tracing is on, and OpenTelemetry is
  not even imported when it is off);
- ``exception``: the traceback of an unexpected error (never sent to clients);
- whatever a line adds with ``extra={...}`` (``extra={"fields": {...}}``
  adds the mapping's keys), such as the failed request's ``method``,
  ``code``, ``reason``, ``failure_class``, ``peer`` and ``correlation_id``
  (``servicer.py``).

The JSON comes from python-json-logger's formatter (the standard library's
``logging`` all the way: every module logs with ``logging.getLogger``); the
process's and the span's fields are added by one filter on the handler, so
both formats show them. The text format is one line per record for a person at a terminal:
``<timestamp> <LEVEL> <component>: <message> key=value ...``; a traceback
or a stack dump follows on the lines after it.

Destination
===========

stderr, or ``--log-file PATH`` (opened for appending; with worker processes
every process appends to it, each line in one ``write``). :func:`configure`
builds a new handler each time it is called, so calling it again with the
same settings reopens the file: that is what SIGHUP does
(``signals.py``), after logrotate has renamed the file.

Cancelled calls
===============

gRPC logs an error with a traceback (``ExecuteBatchError raised in core``)
when a reply could not be sent because the client had already cancelled the
call or closed its connection, whenever its own note of the cancel loses a
race with the failed send. A client that stops reading a Read or a
Subscribe is no error of the server's: :class:`_ClientGone` turns that line
into one debug line without a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

__all__ = ["FORMATS", "STDERR", "configure", "timestamp"]

STDERR = "-"  # the --log-file value that means stderr
FORMATS = ("json", "text")

# Names a record may carry that are not fields of the line.
_NOT_FIELDS = frozenset(RESERVED_ATTRS) | {"message", "asctime", "fields"}


def timestamp(created: float) -> str:
    """RFC 3339, UTC, milliseconds."""
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


class _Context(logging.Filter):
    """Adds the process's fields and the span's ids, and flattens
    ``extra={"fields": {...}}``, before either formatter runs."""

    def __init__(self, fields: Mapping[str, object]) -> None:
        super().__init__()
        self._fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self._fields.items():
            setattr(record, key, value)
        extra = record.__dict__.pop("fields", None)
        if isinstance(extra, Mapping):
            for key, value in extra.items():
                setattr(record, str(key), value)
        # Only a process that set tracing up has spans; reading the module from
        # sys.modules keeps OpenTelemetry unloaded when tracing is off (tracing.py).
        trace = sys.modules.get("opentelemetry.trace")
        if trace is None:
            return True
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            record.trace_id = trace.format_trace_id(span.trace_id)
            record.span_id = trace.format_span_id(span.span_id)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _NOT_FIELDS and not k.startswith("_")
    }


class _Json(JsonFormatter):
    def __init__(self) -> None:
        super().__init__(
            ["name", "message"], rename_fields={"name": "component", "exc_info": "exception"}
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        # First, so that every line starts alike.
        log_data["timestamp"] = timestamp(record.created)
        log_data["level"] = record.levelname.lower()
        super().add_fields(log_data, record, message_dict)


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{timestamp(record.created)} {record.levelname:<7} {record.name}:"
            f" {record.getMessage()}"
        )
        after = []  # values of many lines (a stack) follow the line, as a traceback does
        for key, value in _extras(record).items():
            text = str(value)
            if "\n" in text:
                after.append(f"{key}:\n{text.rstrip()}")
            else:
                line += f" {key}={json.dumps(text) if not text or ' ' in text else text}"
        if record.exc_info:
            after.append(self.formatException(record.exc_info))
        return "\n".join([line, *after])


_GRPC_SEND_FAILED = re.compile(r"ExecuteBatchError raised in core by servicer method \[(.*)\]")


class _ClientGone(logging.Filter):
    """gRPC's error line for a reply that could not be sent to a client that
    had gone (module docstring), as one debug line."""

    def filter(self, record: logging.LogRecord) -> bool:
        m = _GRPC_SEND_FAILED.match(str(record.msg))
        if m is None:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info = record.exc_text = None
        record.msg = "%s: the client cancelled the call or closed its connection"
        record.args = (m[1],)
        return logging.getLogger().isEnabledFor(logging.DEBUG)


_GRPC_SERVER_LOGGER = "grpc._cython.cygrpc"
_client_gone = _ClientGone()
_process_fields: dict[str, object] = {}


def configure(
    level: str = "INFO",
    *,
    format: str = "json",
    file: str = STDERR,
    fields: Mapping[str, object] | None = None,
) -> None:
    """Log to stderr or ``file`` in ``format``, at ``level`` and above; every
    line gets ``fields`` (by default, those of the last call). Called again
    (SIGHUP), it reopens the file. Raises OSError if the file cannot be
    opened (the old handler then stays)."""
    if format not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {format!r}")
    handler: logging.Handler
    if file == STDERR:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(file, mode="a", encoding="utf-8", errors="backslashreplace")
    handler.setFormatter(_Json() if format == "json" else _Text())
    global _process_fields
    if fields is not None:
        _process_fields = dict(fields)
    handler.addFilter(_Context(_process_fields))
    root = logging.getLogger()
    old = root.handlers[:]
    root.handlers[:] = [handler]
    root.setLevel(level)
    for h in old:
        h.close()
    grpc_logger = logging.getLogger(_GRPC_SERVER_LOGGER)
    if _client_gone not in grpc_logger.filters:
        grpc_logger.addFilter(_client_gone)
