"""The baseline the benchmark compares against: the server a user would write in ten lines.

Per request: decode the base64 image with Pillow, run `CLIPProcessor`, call `CLIPModel` on a
batch of one, and return the vector as JSON. Handlers run in Starlette's thread pool, as a
FastAPI `def` endpoint would. No batching, no queue, no limits. It speaks just enough of
Roboflow's `/clip/embed_image` and `/clip/embed_text` for the benchmark's load to run against it.

    python -m clipgate.bench.naive --model DIR --port 8001
"""

from __future__ import annotations

import argparse
import base64
import io
from typing import Any

import torch
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def create_naive_app(model_dir: str) -> Starlette:
    from transformers import CLIPModel, CLIPProcessor

    processor: Any = CLIPProcessor.from_pretrained(model_dir)
    model: Any = CLIPModel.from_pretrained(model_dir)
    model.eval()

    def embed_image(body: dict[str, Any]) -> list[float]:
        image = Image.open(io.BytesIO(base64.b64decode(body["image"]["value"]))).convert("RGB")
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            features = model.get_image_features(**inputs).pooler_output
        return [float(x) for x in features[0]]

    def embed_text(body: dict[str, Any]) -> list[float]:
        inputs = processor(text=[body["text"]], return_tensors="pt", padding=True)
        with torch.no_grad():
            features = model.get_text_features(**inputs).pooler_output
        return [float(x) for x in features[0]]

    async def image_route(request: Request) -> JSONResponse:
        return JSONResponse({"embeddings": [await run_in_threadpool(embed_image, await request.json())]})

    async def text_route(request: Request) -> JSONResponse:
        return JSONResponse({"embeddings": [await run_in_threadpool(embed_text, await request.json())]})

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ready"})

    return Starlette(
        routes=[
            Route("/clip/embed_image", image_route, methods=["POST"]),
            Route("/clip/embed_text", text_route, methods=["POST"]),
            Route("/readyz", ready),  # what the benchmark waits for, as on clipgate
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="the naive per-request CLIP server (benchmark baseline)")
    parser.add_argument("--model", required=True, help="a CLIP checkpoint folder")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_naive_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
