"""The API docs, core routes never under a prefix: `GET /openapi.json` (clipgate.openapi's document)
and `GET /docs`, Swagger UI served from the files the swagger-ui-bundle-v2 package ships, so the
page works with no network: it loads nothing from a CDN or any other host."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route
from swagger_ui_bundle import swagger_ui_path

SPEC = "/openapi.json"
PAGE = "/docs"
ASSET_DIR = Path(str(swagger_ui_path))
ASSETS = {f"{PAGE}/{name}": name for name in ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png")}
PATHS = (SPEC, PAGE, *ASSETS)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="{root}/docs/swagger-ui.css">
<link rel="icon" type="image/png" href="{root}/docs/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{root}/docs/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: {spec},
  dom_id: "#swagger-ui",
  deepLinking: true,
  docExpansion: "list",
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
}});
</script>
</body>
</html>
"""


def page(root_path: str, title: str) -> str:
    """The docs page: Swagger UI's own files, from this server, pointed at this server's document."""
    root = root_path.rstrip("/")
    spec = json.dumps(root + SPEC).replace("<", "\\u003c")
    return _PAGE.format(title=html.escape(title), root=html.escape(root, quote=True), spec=spec)


def routes(document: Mapping[str, Any]) -> list[Route]:
    spec = orjson.dumps(document)
    title = f"{document['info']['title']} {document['info']['version']} API"

    async def openapi_json(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    async def docs(request: Request) -> Response:
        return HTMLResponse(page(request.scope.get("root_path", ""), title))

    def asset(name: str) -> Route:
        async def serve(request: Request) -> Response:
            return FileResponse(ASSET_DIR / name)

        return Route(f"{PAGE}/{name}", serve, methods=["GET"])

    return [
        Route(SPEC, openapi_json, methods=["GET"]),
        Route(PAGE, docs, methods=["GET"]),
        *(asset(name) for name in ASSETS.values()),
    ]
