"""What a real server writes to its log: one access line per request with its fields, every line
one JSON object in JSON mode, the request id on what is logged while serving; keys, never, in
either format and through every protocol's key channel."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import requests

from clipgate.bench.servers import ServerProcess, free_port

KEYS = {"roboflow": "RF-S3CRET-key", "sambastudio": "SS-S3CRET-key", "azureml": "AZ-S3CRET-key"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def drive(base: str) -> list[str]:
    """Requests through every key channel, right and wrong; returns the request ids sent."""
    text = {"text": "a photo of a cat"}
    ids = []
    calls = [
        ("post", "/clip/embed_text?api_key=" + KEYS["roboflow"], {"json": text}),
        ("post", "/clip/embed_text?api%5Fkey=" + KEYS["roboflow"], {"json": text}),
        ("post", "/clip/embed_text", {"json": {**text, "api_key": KEYS["roboflow"]}}),
        ("post", "/clip/embed_text", {"json": text, "headers": {"Authorization": "Bearer " + KEYS["roboflow"]}}),
        ("post", "/clip/embed_text?api_key=wrong-" + KEYS["roboflow"], {"json": text}),
        ("post", "/api/predict/nlp/p/e", {"json": {"inputs": ["a cat"]}, "headers": {"key": KEYS["sambastudio"]}}),
        (
            "post",
            "/api/predict/nlp/p/e",
            {"json": {"inputs": ["a cat"]}, "headers": {"key": "x" + KEYS["sambastudio"]}},
        ),
        (
            "post",
            "/score",
            {
                "json": {"input_data": {"columns": ["image", "text"], "data": [["", "a cat"]]}},
                "headers": {"Authorization": "Bearer " + KEYS["azureml"]},
            },
        ),
    ]
    for n, (method, path, kwargs) in enumerate(calls):
        request_id = f"log-test-{n}"
        headers = {"x-request-id": request_id, "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
        headers.update(kwargs.pop("headers", {}))
        response = requests.request(method, base + path, headers=headers, timeout=30, **kwargs)
        assert response.status_code in (200, 401), response.text
        ids.append(request_id)
    return ids


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_access_lines_and_no_keys_in_any_format(
    cache_dir: Path, tiny_dir: Path, tmp_path: Path, log_format: str
) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "clipgate.cli", "serve", "--model", "random:tiny", "--port", str(port)]
    env = {
        "CLIPGATE_CACHE_DIR": str(cache_dir),
        "CLIPGATE_SERVER_LOG_FORMAT": log_format,
        **{f"CLIPGATE_{name.upper()}_KEYS": key for name, key in KEYS.items()},
    }
    log_path = tmp_path / "server.log"
    with ServerProcess("logging", argv, port, log_path, env=env):
        ids = drive(f"http://127.0.0.1:{port}")
    text = log_path.read_text(errors="replace")
    for key in KEYS.values():
        assert key not in text
    lines = [line for line in text.splitlines() if line.strip()]
    if log_format == "json":
        records = [json.loads(line) for line in lines]  # every line, uvicorn's too, is one JSON object
        assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
        access = {r["request_id"]: r for r in records if r["logger"] == "clipgate.access"}
        assert set(ids) <= set(access)
        first = access[ids[0]]
        assert first["protocol"] == "roboflow" and first["route"] == "/clip/embed_text" and first["method"] == "POST"
        assert first["status"] == 200 and first["texts"] == 1 and first["images"] == 0
        assert first["bytes_in"] > 0 and first["duration_ms"] > 0 and first["client"].startswith("127.0.0.1:")
        assert first["trace_id"] == TRACE_ID
        assert access[ids[4]]["status"] == 401
        assert access[ids[5]]["route"] == "/api/predict/nlp/{project}/{endpoint}"
        assert access[ids[7]]["protocol"] == "azureml"
    else:
        access_lines = [line for line in lines if " clipgate.access: " in line and "request_id=log-test-" in line]
        assert len(access_lines) == len(ids)
        assert "POST /clip/embed_text 200" in access_lines[0] and f"request_id={ids[0]}" in access_lines[0]
        assert "protocol=roboflow" in access_lines[0] and f"trace_id={TRACE_ID}" in access_lines[0]
    assert " uvicorn.access" not in text and '"uvicorn.access"' not in text  # clipgate's own line only
