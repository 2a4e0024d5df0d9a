"""What a real server writes to its log: requests, yes; credentials, never."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import requests


def test_keys_in_the_query_never_reach_the_access_log(live_server: str, live_server_log: Path) -> None:
    secrets = ["S3CRET-plain", "S3CRET-encoded", "S3CRET-body"]
    body = {"text": "a photo of a cat"}
    plain = requests.post(f"{live_server}/clip/embed_text?api_key={secrets[0]}", json=body, timeout=30)
    # requests would normalise %5F to "_"; http.client sends the path exactly as written.
    address = urlsplit(live_server)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
    connection.request(
        "POST", f"/clip/embed_text?api%5Fkey={secrets[1]}", json.dumps(body), {"Content-Type": "application/json"}
    )
    encoded = connection.getresponse()
    encoded.read()
    connection.close()
    in_body = requests.post(f"{live_server}/clip/embed_text", json={**body, "api_key": secrets[2]}, timeout=30)
    assert plain.status_code == encoded.status == in_body.status_code == 200
    log = live_server_log.read_text(errors="replace")
    assert "/clip/embed_text?api_key=***" in log and "/clip/embed_text?api%5Fkey=***" in log
    for secret in secrets:
        assert secret not in log
