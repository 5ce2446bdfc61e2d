"""The API docs at `/docs` (Swagger UI) and `/redoc` (ReDoc), from assets installed with the service.

FastAPI's own docs pages load Swagger UI and ReDoc from a CDN, which fails offline and behind
strict egress. The same pages are built here (FastAPI's `get_swagger_ui_html`/`get_redoc_html`)
pointing at the minified dist files that the `fastapi-offline` package ships (MIT licensed,
its licence travels with it). The pages, their assets and `/openapi.json` are public even when
the service has an API key: they hold no secrets, and a browser cannot send a header to open
them. With a key set the schema declares an `X-API-Key` apiKey scheme, so Swagger's
"Authorize" button stores the key and every "Try it out" call sends it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

from service.api.page import packaged_file
from service.errors import NotFound

router = APIRouter(include_in_schema=False)

OPENAPI_URL = "/openapi.json"
ASSETS = "/docs/assets"
_ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
DOCS_PATHS = frozenset({"/docs", "/redoc", OPENAPI_URL, *(f"{ASSETS}/{name}" for name in _ASSET_TYPES)})
SECURITY_SCHEME = {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}


@router.get("/docs")
async def swagger_ui(request: Request) -> Response:
    return get_swagger_ui_html(
        openapi_url=OPENAPI_URL,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon.png",
        swagger_ui_parameters={"persistAuthorization": True},
    )


@router.get("/redoc")
async def redoc(request: Request) -> Response:
    return get_redoc_html(
        openapi_url=OPENAPI_URL,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS}/favicon.png",
        with_google_fonts=False,
    )


@router.get(ASSETS + "/{name}")
async def asset(name: str, request: Request) -> Response:
    media_type = _ASSET_TYPES.get(name)
    if media_type is None:
        raise NotFound(f"no docs asset {name[:100]!r}")
    headers = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
    return packaged_file(request, "fastapi_offline", name, media_type, headers)


def add_api_key_scheme(schema: dict) -> dict:
    """`schema` declaring that every operation takes the `X-API-Key` header (Swagger's Authorize button)."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY_SCHEME)
    schema["security"] = [{"ApiKey": []}]
    return schema
