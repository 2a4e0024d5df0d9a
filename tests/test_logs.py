"""Log lines: JSON objects with the standard fields, text with key=value extras, the request id
on every record logged while a request is served, the trace id from a W3C traceparent."""

from __future__ import annotations

import json
import logging

import pytest
from starlette.testclient import TestClient

from clipgate import logs
from clipgate.config import ServerConfig


def record(msg: str = "hello %s", args: tuple[object, ...] = ("world",), **extra: object) -> logging.LogRecord:
    item = logging.getLogger("clipgate.test").makeRecord("clipgate.test", logging.WARNING, "f.py", 1, msg, args, None)
    for key, value in extra.items():
        setattr(item, key, value)
    return item


def test_json_lines_carry_the_standard_fields_the_request_id_and_extras() -> None:
    line = logs.JsonFormatter().format(record(request_id="r-1", status=503, route="/clip/embed_text"))
    entry = json.loads(line)
    assert entry["level"] == "warning" and entry["logger"] == "clipgate.test" and entry["msg"] == "hello world"
    assert entry["request_id"] == "r-1" and entry["status"] == 503 and entry["route"] == "/clip/embed_text"
    assert entry["ts"].endswith("Z") and "T" in entry["ts"]
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = record(request_id=None)
        failed.exc_info = sys.exc_info()
    entry = json.loads(logs.JsonFormatter().format(failed))
    assert "request_id" not in entry and "ValueError: boom" in entry["exc"]


def test_text_lines_end_with_the_request_id_and_extras() -> None:
    line = logs.TextFormatter().format(record(request_id="r-2", status=200, texts=None))
    assert line.endswith("WARNING clipgate.test: hello world request_id=r-2 status=200")


@pytest.mark.parametrize(
    ("header", "trace"),
    [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736"),
        (" 00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01 ", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-4bf92f35-00f067aa0ba902b7-01", None),
        ("junk", None),
        (None, None),
    ],
)
def test_trace_id_from_traceparent(header: str | None, trace: str | None) -> None:
    assert logs.trace_id(header) == trace


def test_records_logged_while_serving_carry_the_request_id(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client.post("/clip/embed_text", json={"text": "a cat"}, headers={"x-request-id": "abc-123"})
    access = [r for r in caplog.records if r.name == logs.ACCESS_LOGGER]
    assert len(access) == 1 and access[0].request_id == "abc-123"  # type: ignore[attr-defined]
    assert access[0].protocol == "roboflow" and access[0].status == 200  # type: ignore[attr-defined]
    caplog.clear()
    client.post("/clip/embed_text", content=b"{", headers={"content-type": "application/json"})
    generated = [r for r in caplog.records if r.name == logs.ACCESS_LOGGER][0]
    assert len(generated.request_id) == 36  # type: ignore[attr-defined]  # one made up, a UUID
    assert logs.REQUEST_ID.get() is None  # and forgotten once the request is over


def test_configure_logging_keeps_a_hosts_root_handler_and_is_idempotent() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        root.handlers = []
        logs.configure_logging(ServerConfig(log_format="json"))
        logs.configure_logging(ServerConfig(log_format="json"))
        ours = [h for h in root.handlers if h.get_name() == logs.HANDLER_NAME]
        assert len(ours) == 1 and isinstance(ours[0].formatter, logs.JsonFormatter)
        logs.configure_logging(ServerConfig(log_format="text"))
        assert isinstance(ours[0].formatter, logs.TextFormatter)
        root.handlers = [host := logging.NullHandler()]
        logs.configure_logging(ServerConfig(log_format="json"))
        assert root.handlers == [host] and host.formatter is None  # the host's own handler is left alone
        assert logging.getLogger("uvicorn.access").disabled
    finally:
        root.handlers, _ = saved[0], root.setLevel(saved[1])
