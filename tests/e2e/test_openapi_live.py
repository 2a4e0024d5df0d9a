"""The API docs on a live server: a bounded schemathesis run over /openapi.json finds no 5xx, no
answer off its documented status, type, headers or schema, no undocumented method answered but
with 405 and Allow, and no crash; and Debian's Chromium, headless and cut off from every host but
this server, renders /docs as the README describes it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from clipgate import __version__

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",  # each undocumented method: 405 with Allow
    "allow_header_conformance",
    "missing_required_header",
)
MAX_EXAMPLES = 5  # per operation and phase; the coverage phase adds its own boundary cases
SEED = 1
SCHEMATHESIS_TIMEOUT_S = 300
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in CI
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def documented(base_url: str) -> dict[str, Any]:
    document: dict[str, Any] = requests.get(f"{base_url}/openapi.json", timeout=10).json()
    return document


def test_schemathesis_finds_no_server_error_and_no_answer_off_its_schema(live_server: str, tmp_path: Path) -> None:
    report = tmp_path / "schemathesis.json"
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "run", f"{live_server}/openapi.json"),
        *("--checks", ",".join(CHECKS), "--phases", "examples,coverage,fuzzing"),
        *("--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1"),
        *("--request-timeout", "30", "--generation-database", "none", "--no-color"),
        *("--report", "json", "--report-json-path", str(report)),
    ]
    # In a folder of its own: no schemathesis.toml is picked up, no report lands in the repo.
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=SCHEMATHESIS_TIMEOUT_S)
    output = done.stdout[-6000:] + done.stderr[-2000:]
    assert report.is_file(), f"schemathesis wrote no report (exit {done.returncode}):\n{output}"
    run = json.loads(report.read_text())
    operations, cases = run["operations"], run["test_cases"]
    print(
        f"schemathesis {run['schemathesis_version']}: {operations['tested']} operations, {cases['generated']} "
        f"examples, {cases['unique_failures']} failures, {len(run['errors'])} errors in {run['running_time']:.1f} s"
    )
    assert done.returncode == 0, output
    assert run["complete"] and not run["failures"] and not run["errors"], output
    assert cases["unique_failures"] == cases["errored"] == 0, output
    expected = sum(len(item) for item in documented(live_server)["paths"].values())
    assert operations["tested"] == operations["total"] == expected, operations
    assert requests.get(f"{live_server}/livez", timeout=10).status_code == 200  # the server is still up


def test_the_docs_page_shows_every_operation_with_the_network_cut_off(live_server: str) -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"{CHROMIUM} is missing: the docs page test drives Debian's Chromium. `make test` installs it "
            "when run as root (apt-get install chromium); otherwise install the package first.",
            pytrace=False,
        )
    from playwright.sync_api import Route, sync_playwright

    document = documented(live_server)
    tags = [tag["name"] for tag in document["tags"]]
    expected: dict[str, list[list[str]]] = {tag: [] for tag in tags}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            expected[operation["tags"][0]].append([method.upper(), path, operation["summary"]])
    server = urlsplit(live_server).netloc
    local: list[str] = []
    elsewhere: list[str] = []

    def only_this_server(route: Route) -> None:
        if urlsplit(route.request.url).netloc == server:
            local.append(route.request.url)
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            context.route("**/*", only_this_server)
            page = context.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.goto(f"{live_server}/docs")
            page.wait_for_selector(".opblock", timeout=30_000)

            assert page.title() == f"clipgate {__version__} API"
            header = page.inner_text(".information-container .title")
            assert "clipgate" in header and __version__ in header and "OAS 3.1" in header
            assert page.get_attribute(".information-container a.link", "href") == "/openapi.json"
            assert page.locator("button.authorize").count() == 1
            shown = page.eval_on_selector_all(
                ".opblock-tag-section",
                """sections => sections.map(s => [
                    s.querySelector("h3.opblock-tag").getAttribute("data-tag"),
                    [...s.querySelectorAll(".opblock")].map(op => [
                        op.querySelector(".opblock-summary-method").innerText,
                        op.querySelector(".opblock-summary-path").getAttribute("data-path"),
                        op.querySelector(".opblock-summary-description").innerText,
                    ]),
                ])""",
            )
            assert [tag for tag, _ in shown] == tags  # one section per protocol, in the document's order
            assert dict(shown) == expected  # each operation: method, path under its prefix, summary

            # Expanded, an operation shows its worked example and every documented status.
            page.click("#operations-azureml-azureml_post_score .opblock-summary")
            page.wait_for_selector("#operations-azureml-azureml_post_score .responses-table", timeout=10_000)
            score = page.locator("#operations-azureml-azureml_post_score")
            assert "a photo of a cat" in score.locator(".body-param__example, .highlight-code").first.inner_text()
            statuses = score.locator(".responses-table tr.response .response-col_status").all_inner_texts()
            assert [s.split()[0] for s in statuses] == list(document["paths"]["/score"]["post"]["responses"])
            assert page_errors == []
        finally:
            browser.close()
    assert elsewhere == [], f"the docs page tried to reach other hosts: {elsewhere}"
    assert f"{live_server}/docs/swagger-ui-bundle.js" in local and f"{live_server}/openapi.json" in local
