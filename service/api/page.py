"""The explorer page at `GET /`: static HTML, JS and CSS packaged with `service/` (no CDN, no build step).

The files are read through `importlib.resources`, so they are found in an installed wheel as
well as in a checkout. They hold no secrets and must load before the page can ask for the
API key, so `PAGE_PATHS` are meant to be exempt from the key; every API call the page makes
sends `X-API-Key`.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Request, Response

from service.errors import NotFound

router = APIRouter(tags=["page"])

_STATIC_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PAGE_PATHS = frozenset({"/", *(f"/static/{name}" for name in _STATIC_TYPES)})

# Everything the page loads comes from this origin; images are blob: URLs made from fetched PNGs.
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}


@cache
def _packaged(package: str, name: str) -> tuple[bytes, str]:
    content = files(package).joinpath("static", name).read_bytes()
    return content, '"' + hashlib.sha256(content).hexdigest()[:32] + '"'


def packaged_file(request: Request, package: str, name: str, media_type: str, headers: dict[str, str]) -> Response:
    """`<package>/static/<name>` (read once), with an ETag; 304 when the client has it already."""
    content, etag = _packaged(package, name)
    headers = {**headers, "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(content, media_type=media_type, headers=headers)


@router.get("/", include_in_schema=False)
async def index(request: Request) -> Response:
    """The model explorer: predict, probability bars, activation grids, kernels, Grad-CAM."""
    return packaged_file(request, "service", "index.html", "text/html; charset=utf-8", _HEADERS)


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str, request: Request) -> Response:
    """The page's script and stylesheet."""
    media_type = _STATIC_TYPES.get(name)
    if media_type is None:
        raise NotFound(f"no static file {name[:100]!r}")
    return packaged_file(request, "service", name, media_type, _HEADERS)
