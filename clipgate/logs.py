"""clipgate's log lines: text for people, or one JSON object per line for machines, and the
request id on every record logged while a request is served (a context variable, set by the
endpoint wrapper). clipgate writes its own access line per request; uvicorn's, which knows
neither the request id nor the protocol, is off."""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

import orjson

from clipgate.config import ServerConfig

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("clipgate_request_id", default=None)
HANDLER_NAME = "clipgate"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER = "clipgate.access"
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}

log = logging.getLogger(ACCESS_LOGGER)


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` header, if it is a valid one (not all zeros)."""
    match = _TRACEPARENT.fullmatch(traceparent.strip().lower()) if traceparent else None
    if match is None or set(match.group(1)) == {"0"}:
        return None
    return match.group(1)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """What a record carries besides the standard attributes: `extra=` fields."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id (while serving), any extra
    fields, and the traceback as `exc` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """The classic line, with the request id and any extra fields as key=value after the message."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        extra = _fields(record)
        tail = ([f"request_id={request_id}"] if request_id and "request_id" not in extra else []) + [
            f"{k}={v}" for k, v in extra.items() if v is not None
        ]
        if not tail:
            return line
        head, sep, rest = line.partition("\n")  # keep a traceback below the fields
        return head + " " + " ".join(tail) + sep + rest


_factory = logging.getLogRecordFactory()


def _record_with_request_id(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _factory(*args, **kwargs)
    record.request_id = REQUEST_ID.get()
    return record


def resolve_format(log_format: str) -> str:
    """`auto` is JSON when stderr is not a terminal (a container, a service manager), else text."""
    if log_format == "auto":
        return "text" if sys.stderr.isatty() else "json"
    return log_format


def configure_logging(server: ServerConfig) -> None:
    """Format and level for clipgate and the host's uvicorn loggers. Idempotent. A host that has
    configured the root logger itself (a handler of its own) keeps it; the request id is still
    added to every record."""
    if logging.getLogRecordFactory() is not _record_with_request_id:
        logging.setLogRecordFactory(_record_with_request_id)
    level = server.log_level.upper().replace("TRACE", "DEBUG")
    root = logging.getLogger()
    ours = [h for h in root.handlers if h.get_name() == HANDLER_NAME]
    handler: logging.Handler | None = ours[0] if ours else None
    if handler is None and not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(HANDLER_NAME)
        root.addHandler(handler)
    if handler is not None:
        handler.setFormatter(JsonFormatter() if resolve_format(server.log_format) == "json" else TextFormatter())
        root.setLevel(level)
        for name in ("uvicorn", "uvicorn.error"):  # uvicorn's own lines in the same format, through ours
            uvicorn_logger = logging.getLogger(name)
            uvicorn_logger.handlers.clear()
            uvicorn_logger.propagate = True
    logging.getLogger("clipgate").setLevel(level)
    logging.getLogger("uvicorn.access").disabled = True  # clipgate writes its own access line


def access(fields: Mapping[str, Any]) -> None:
    """The one access line of a request, logged while its request id is current (which every
    record carries already, so it is not an extra field)."""
    if log.isEnabledFor(logging.INFO):
        extra = {k: v for k, v in fields.items() if k != "request_id"}
        log.info("%s %s %s", fields.get("method"), fields.get("route"), fields.get("status"), extra=extra)
