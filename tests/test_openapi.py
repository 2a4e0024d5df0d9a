"""GET /openapi.json and GET /docs: the document is valid OpenAPI 3.1, lists exactly the app's routes
(under their prefixes, without disabled protocols), its examples work and match their schemas, its
error responses are what the adapters render, and the docs page loads nothing from another host."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate
from PIL import Image
from starlette.routing import Route
from starlette.testclient import TestClient

import adapters
from clipgate import __version__, docs, openapi
from clipgate.adapter import Adapter, Body, Operation, ProtocolSettings, Reply
from clipgate.app import create_app, load_app_config
from clipgate.canonical import EmbedRequest, EmbedResult, RequestMeta, TextInput
from clipgate.config import Config, load_config
from clipgate.engine import Model
from clipgate.errors import ClipgateError, InvalidRequest
from tests.conftest import make_config

METHODS = ("get", "post", "put", "patch", "delete")
CONFIGS = {
    "default": {},
    "prefixed": {"roboflow": {"prefix": "/rf"}, "sambastudio": {"prefix": "/ss/"}, "azureml": {"prefix": "/az"}},
    "roboflow-off": {"roboflow": {"enabled": False}, "azureml": {"prefix": "/azure/ml"}},
    "all-off": {name: {"enabled": False} for name in ("sambastudio", "azureml", "roboflow")},
    "metrics-off": {"server": {"metrics": False}},
    "metrics-apart": {"server": {"metrics_port": 9464}},  # served by its own exporter, not this app
    "faults-on": {"faults": {"enabled": True, "admin_key": "k"}},  # the admin route
}


def config_named(name: str) -> Config:
    return make_config(**CONFIGS[name])


@pytest.fixture(scope="module")
def app_client(model: Model) -> Iterator[TestClient]:
    with TestClient(create_app(make_config(), model)) as client:
        yield client


@pytest.fixture(scope="module")
def spec(app_client: TestClient) -> dict[str, Any]:
    response = app_client.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def operations(document: Mapping[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def validator(document: Mapping[str, Any], schema: Mapping[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator for one of the document's schemas, its `#/components/...` references resolved."""
    return jsonschema.Draft202012Validator({"allOf": [schema], "components": document["components"]})


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 120, 200)).save(out, "PNG")
    return out.getvalue()


# --- the document -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_document_is_valid_openapi_3_1(name: str) -> None:
    document = openapi.document(config_named(name), adapters.REGISTRY, __version__)
    validate(document)  # openapi-spec-validator: raises on any error
    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == __version__


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_route_is_documented_and_every_documented_path_is_routed(model: Model, name: str) -> None:
    """Both ways, over the app's actual routes; the docs routes themselves are the one exclusion."""
    app = create_app(config_named(name), model)
    # OpenAPI writes a Starlette path parameter with a convertor, {model:path}, as {model}
    routed = {re.sub(r"{(\w+):\w+}", r"{\1}", route.path) for route in app.routes if isinstance(route, Route)}
    assert set(docs.PATHS) <= routed
    documented = set(TestClient(app).get("/openapi.json").json()["paths"])  # no lifespan: no exporter started
    assert routed - set(docs.PATHS) == documented
    assert ("/metrics" in documented) == (name != "metrics-off" and name != "metrics-apart")
    assert not documented & set(docs.PATHS)


def test_prefixes_and_disabled_protocols_shape_the_document() -> None:
    prefixed = openapi.document(config_named("prefixed"), adapters.REGISTRY, __version__)
    assert {"/rf/clip/embed_text", "/ss/api/predict/nlp/{project}/{endpoint}", "/az", "/az/score"} <= set(
        prefixed["paths"]
    )
    assert "/clip/embed_text" not in prefixed["paths"] and "/" not in prefixed["paths"]
    off = openapi.document(config_named("roboflow-off"), adapters.REGISTRY, __version__)
    assert not [path for path in off["paths"] if path.startswith("/clip")]
    assert [tag["name"] for tag in off["tags"]] == ["clipgate", "sambastudio", "azureml", "openai", "cohere"]
    assert "roboflow_error" not in off["components"]["schemas"]
    assert "roboflow_bearer" not in off["components"]["securitySchemes"]


def test_path_parameters_are_declared(spec: dict[str, Any]) -> None:
    for path, _, operation in operations(spec):
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), path


def test_undocumented_methods_are_405_and_documented_ones_answer_a_documented_status(
    app_client: TestClient, spec: dict[str, Any]
) -> None:
    for path, item in spec["paths"].items():
        url = path.replace("{project}", "p").replace("{endpoint}", "e")
        for method in METHODS:
            response = app_client.request(method.upper(), url)
            if method in item:
                assert str(response.status_code) in item[method]["responses"], (method, path, response.text)
            else:
                assert response.status_code == 405, (method, path)


def test_each_vendor_documents_its_auth_and_public_routes_need_none(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["roboflow_api_key_query"] == {
        "type": "apiKey",
        "in": "query",
        "name": "api_key",
        "description": "`?api_key=<key>`",
    }
    assert schemes["roboflow_bearer"]["scheme"] == schemes["azureml_bearer"]["scheme"] == "bearer"
    assert schemes["sambastudio_key"]["in"] == "header" and schemes["sambastudio_key"]["name"] == "key"
    score = spec["paths"]["/score"]["post"]
    assert score["security"] == [{"azureml_bearer": []}, {}]  # no keys set: the key is optional
    assert spec["paths"]["/info"]["get"]["security"] == []
    assert spec["paths"]["/livez"]["get"]["security"] == []
    keyed = openapi.document(make_config(azureml={"keys": ("k",)}), adapters.REGISTRY, __version__)
    assert keyed["paths"]["/score"]["post"]["security"] == [{"azureml_bearer": []}]


def test_errors_are_documented_per_status_as_each_adapter_renders_them(spec: dict[str, Any]) -> None:
    embed_text = spec["paths"]["/clip/embed_text"]["post"]["responses"]
    assert {"400", "401", "404", "408", "413", "422", "431", "500", "503"} <= set(embed_text)
    assert "429" not in embed_text
    detail = embed_text["422"]["content"]["application/json"]["examples"]["SchemaError"]["value"]
    assert detail["detail"][0]["loc"] == ["body"]
    score = spec["paths"]["/score"]["post"]["responses"]
    assert {"400", "401", "408", "413", "415", "429", "431", "500", "503"} <= set(score)
    assert "422" not in score and "x-ms-run-function-failed" in score["400"]["headers"]
    assert "Retry-After" in score["429"]["headers"]
    nlp = spec["paths"]["/api/predict/nlp/{project}/{endpoint}"]["post"]["responses"]
    assert nlp["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/sambastudio_error"}
    assert "422" not in nlp and "415" not in nlp and "404" not in nlp
    assert set(spec["paths"]["/info"]["get"]["responses"]) == {"200", "431", "500"}


def test_every_example_matches_its_schema(spec: dict[str, Any]) -> None:
    checked = 0
    for path, method, operation in operations(spec):
        media_types = [*operation.get("requestBody", {}).get("content", {}).values()]
        media_types += [m for r in operation["responses"].values() for m in r.get("content", {}).values()]
        for media in media_types:
            examples = [e["value"] for e in media.get("examples", {}).values()]
            examples += [media["example"]] if "example" in media else []
            for example in examples:
                errors = list(validator(spec, media["schema"]).iter_errors(example))
                assert not errors, (method, path, example, errors[0].message)
                checked += 1
    assert checked > 100


def test_every_operation_has_a_summary_a_200_schema_and_an_example(spec: dict[str, Any]) -> None:
    for path, method, operation in operations(spec):
        assert operation["summary"] and not operation["summary"].startswith(method.upper()), path
        ok = operation["responses"]["200"]["content"]
        assert all(media["schema"] for media in ok.values()), path
        body = operation.get("requestBody", {}).get("content", {})
        if "application/json" in body:
            assert "example" in body["application/json"], path
        elif not body:
            assert all("example" in media for media in ok.values()), path


def test_the_worked_examples_work(app_client: TestClient, spec: dict[str, Any]) -> None:
    """Each operation's example, sent as written, gets a 200 that matches the documented answer."""
    for path, method, operation in operations(spec):
        url = path
        for parameter in operation.get("parameters", []):
            url = url.replace("{" + parameter["name"] + "}", parameter["schema"]["examples"][0])
        body = operation.get("requestBody", {}).get("content", {})
        if "multipart/form-data" in body:
            response = app_client.request(method.upper(), url, files={"predict_file": ("cat.png", png())})
        elif "application/json" in body:
            response = app_client.request(method.upper(), url, json=body["application/json"]["example"])
        else:
            response = app_client.request(method.upper(), url)
        assert response.status_code == 200, (method, path, response.text)
        (media_type, media), *_ = operation["responses"]["200"]["content"].items()
        assert response.headers["content-type"].startswith(media_type), path
        answer = response.json() if media_type == "application/json" else response.text
        errors = list(validator(spec, media["schema"]).iter_errors(answer))
        assert not errors, (method, path, errors[0].message)


def test_the_example_images_are_real_images() -> None:
    example = adapters.REGISTRY["roboflow"].operations[0].doc.example
    with Image.open(io.BytesIO(base64.b64decode(example["image"]["value"]))) as image:
        assert image.size == (4, 4)


# --- a protocol that declares nothing still documents itself ------------------------------------


def _parse(body: Body, meta: RequestMeta) -> EmbedRequest:
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        raise InvalidRequest('The body must be {"text": "..."}.')
    return EmbedRequest(items=[TextInput(body["text"])])


def _render(result: EmbedResult, request: EmbedRequest) -> Any:
    return {"vector": result.vectors[0]}


def _render_error(err: ClipgateError) -> Reply:
    return Reply(err.status, {"bare_error": err.message})


BARE = Adapter(
    name="bare",
    operations=(
        Operation("/bare/{kind}/embed", parse=_parse, render=_render),
        Operation("/bare/about", methods=("GET",), body="none", respond=lambda s, m: Reply(200, {}), public=True),
    ),
    render_error=_render_error,
    credential=lambda body, meta: meta.headers.get("x-bare-key"),
)


def test_a_protocol_without_docs_is_listed_with_generic_schemas() -> None:
    registry = {**adapters.REGISTRY, "bare": BARE}
    protocols = {name: a.settings for name, a in registry.items()} | {"bare": ProtocolSettings}
    config = load_config(None, {}, protocols=protocols).replace("bare", prefix="/b")
    document = openapi.document(config, registry, __version__)
    validate(document)
    embed = document["paths"]["/b/bare/{kind}/embed"]["post"]
    assert embed["tags"] == ["bare"] and embed["summary"] == "POST /bare/{kind}/embed"
    assert embed["parameters"] == [{"name": "kind", "in": "path", "required": True, "schema": {"type": "string"}}]
    assert embed["requestBody"]["content"]["application/json"]["schema"] == {"type": "object"}
    assert embed["responses"]["200"]["content"]["application/json"]["schema"] == {}
    bad = embed["responses"]["400"]["content"]["application/json"]
    assert (
        bad["schema"] == {"$ref": "#/components/schemas/bare_error"}
        and document["components"]["schemas"]["bare_error"] == {}
    )
    assert bad["examples"]["InvalidRequest"]["value"] == {"bare_error": "The request holds nothing to embed."}
    assert "security" not in embed  # it declares no scheme; its routes still need its key once keys are set
    assert document["paths"]["/b/bare/about"]["get"]["security"] == []


# --- the docs page ------------------------------------------------------------------------------


def test_the_docs_page_loads_only_this_servers_files(app_client: TestClient) -> None:
    page = app_client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", page.text), "the docs page must name no other host (no CDN)"
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(assets) == sorted(docs.ASSETS)
    for asset in assets:
        response = app_client.get(asset)
        assert response.status_code == 200 and len(response.content) > 500, asset
    assert 'url: "/openapi.json"' in page.text
    assert app_client.get("/docs/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")


def test_the_docs_page_follows_the_root_path() -> None:
    page = docs.page("/gateway/", "clipgate")
    assert 'href="/gateway/docs/swagger-ui.css"' in page and 'url: "/gateway/openapi.json"' in page


def test_docs_routes_are_never_prefixed_and_collide_like_probes(model: Model) -> None:
    with TestClient(create_app(config_named("prefixed"), model)) as client:
        assert client.get("/openapi.json").status_code == client.get("/docs").status_code == 200
        assert client.get("/rf/openapi.json").status_code == 404
    with pytest.raises(ValueError, match="/docs is served by both clipgate's API docs and azureml"):
        create_app(make_config(azureml={"prefix": "/docs"}), model)


def test_azure_keeps_its_own_swagger_document(app_client: TestClient) -> None:
    swagger = app_client.get("/swagger.json")
    assert swagger.status_code == 200 and swagger.json()["swagger"] == "2.0"


def test_the_default_config_documents_every_registered_protocol() -> None:
    document = openapi.document(load_app_config(), adapters.REGISTRY, __version__)
    assert [tag["name"] for tag in document["tags"]] == ["clipgate", *adapters.REGISTRY]
