"""The README's calls for the OpenAI-compatible and Cohere protocols, taken from the README as
written and run against a live server (its URL in place of localhost:8000, a cat.jpg beside it):
what they print in their comments is what they get."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from tests import imagegen

ROOT = Path(__file__).resolve().parents[2]
DIM = 512


def readme_blocks(title: str) -> list[str]:
    """The python blocks of one `### title` section of the README."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n### {title}\n", 1)[1]
    section = re.split(r"\n##+ ", section, maxsplit=1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def run(blocks: list[str], live_server: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    (folder / "cat.jpg").write_bytes(imagegen.sample("jpeg", seed=51))
    monkeypatch.chdir(folder)
    namespaces: list[dict[str, Any]] = []
    for block in blocks:
        code = block.replace("http://localhost:8000", live_server)
        assert code != block, "the README's call names localhost:8000"
        namespace: dict[str, Any] = {}
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
        namespaces.append(namespace)
    return namespaces


def unit_vector(values: Any) -> bool:
    values = list(values)
    return len(values) == DIM and abs(math.sqrt(sum(v * v for v in values)) - 1) < 1e-4


def test_the_readme_openai_calls_work_as_written(
    live_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiktoken_cache: Path
) -> None:
    blocks = readme_blocks("OpenAI-compatible embeddings")
    assert len(blocks) == 2 and "from openai import OpenAI" in blocks[0] and "OpenAIEmbeddings" in blocks[1]
    blocks[1] = "vectors = " + blocks[1].strip().splitlines()[-1]  # keep the result of the one-liner
    blocks[1] = "from langchain_openai import OpenAIEmbeddings\n" + blocks[1]
    first, second = run(blocks, live_server, tmp_path, monkeypatch)
    try:
        assert [len(row.embedding) for row in first["response"].data] == [DIM, DIM]
        assert unit_vector(first["response"].data[0].embedding)
        assert unit_vector(first["pictures"].data[0].embedding)
        assert len(second["vectors"]) == 2 and all(map(unit_vector, second["vectors"]))
    finally:
        first["client"].close()


def test_the_readme_cohere_call_works_as_written(
    live_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (block,) = readme_blocks("Cohere Embed")
    (namespace,) = run([block], live_server, tmp_path, monkeypatch)
    try:
        assert unit_vector(namespace["response"].embeddings.float_[0])
        pictures = namespace["pictures"]
        assert unit_vector(pictures.embeddings.float_[0]) and len(pictures.embeddings.ubinary[0]) == DIM // 8
        assert pictures.images[0].format == "jpeg"
    finally:
        namespace["co"]._client_wrapper.httpx_client.httpx_client.close()
