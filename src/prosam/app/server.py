"""The page's web server: Starlette routes over an :class:`~prosam.app.session.AppSession`.

Every route answers JSON; a user error is ``400 {"error": "one line"}``. Only the page's own
static files, images under the root or uploaded, and a job's outputs are ever served.

A request that changes state (any method but GET) is accepted only from the page itself: its
``Origin`` (or, without one, its ``Referer``) must be this server, it must carry the
per-server token the page reads from its own HTML (a header, never a URL), and a JSON body must
say ``application/json``. A page on another site can send none of these, so it can neither
add a reference nor start a job.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import warnings
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from prosam.app.session import AppSession, jpeg_bytes
from prosam.errors import InputError, ProsamWarning

MAX_JSON_BYTES = 1024 * 1024
STATIC = {"app.js": "text/javascript", "app.css": "text/css"}
TOKEN_HEADER = "x-prosam-token"
SAFE_METHODS = frozenset({"GET", "HEAD"})
UPLOAD_TYPES = ("application/octet-stream", "image/")

Handler = Callable[[Request], Awaitable[Response]]


def _static(name: str) -> str:
    return resources.files("prosam.app").joinpath("static", name).read_text(encoding="utf-8")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputError(f"the request is {declared} bytes, over the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise InputError(f"the request is over the {limit}-byte limit")
    return bytes(body)


async def _json(request: Request) -> dict[str, Any]:
    try:
        value = json.loads(await _read_body(request, MAX_JSON_BYTES) or b"{}")
    except ValueError:
        raise InputError("the request body is not JSON") from None
    if not isinstance(value, dict):
        raise InputError("the request body must be a JSON object")
    return value


def _guarded(handler: Handler) -> Handler:
    """``handler`` with user errors as ``400 {"error": ...}``."""

    async def run(request: Request) -> Response:
        try:
            check_same_origin(request, request.app.state.token)
            return await handler(request)
        except CrossSiteError as err:
            return JSONResponse({"error": str(err)}, status_code=403)
        except InputError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        except (TypeError, ValueError, KeyError) as err:
            return JSONResponse({"error": f"bad request: {err}"}, status_code=400)

    return run


def _origin_of(request: Request) -> str | None:
    """``scheme://host[:port]`` the request says it came from (``Origin``, else ``Referer``)."""
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if not referer:
            return None
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    return origin.rstrip("/").lower()


def check_same_origin(request: Request, token: str) -> None:
    """Refuse (``InputError``) a state-changing request that did not come from the page."""
    if request.method in SAFE_METHODS:
        return
    own = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
    origin = _origin_of(request)
    if origin != own:
        raise CrossSiteError(f"refused: the request comes from {origin or 'no page'}, not {own}")
    if not secrets.compare_digest(request.headers.get(TOKEN_HEADER, ""), token):
        raise CrossSiteError("refused: the page's token is missing or wrong; reload the page")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.url.path == "/api/upload":
        if not kind.startswith(UPLOAD_TYPES):
            raise CrossSiteError("refused: an upload must be sent as an image")
    elif kind != "application/json" and request.method != "DELETE":
        raise CrossSiteError("refused: the request body must be application/json")


class CrossSiteError(InputError):
    """A state-changing request that did not come from the page (answered 403)."""


def _field(body: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    value = body.get(name, default)
    if value is ...:
        raise InputError(f"missing {name!r}")
    if value is not None and not isinstance(value, kind):
        raise InputError(f"{name!r} must be a {kind.__name__}")
    return value


def create_app(
    session: AppSession, *, allowed_hosts: list[str] | None = None, token: str | None = None
) -> Starlette:
    """The page's ASGI application over ``session`` (``token``: the page's secret, random
    unless given; the app keeps it as ``app.state.token``)."""
    page_token = token or secrets.token_urlsafe(32)

    async def index(request: Request) -> Response:
        html = _static("index.html").replace("{{token}}", page_token)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response(_static(name), media_type=STATIC[name])

    async def config(request: Request) -> Response:
        return JSONResponse(session.config())

    async def browse(request: Request) -> Response:
        listing = session.folder.listing(request.query_params.get("folder", ""))
        return JSONResponse(
            {"folder": listing.folder, "folders": listing.folders, "images": listing.images}
        )

    async def upload(request: Request) -> Response:
        data = await _read_body(request, session.settings.max_upload_bytes)
        target = request.query_params.get("to") == "targets"
        file_name = request.headers.get("x-filename")
        name = await run_in_threadpool(
            lambda: session.upload(data, target=target, file_name=file_name)
        )
        return JSONResponse({"image": name})

    async def open_image(request: Request) -> Response:
        body = await _json(request)
        info = await run_in_threadpool(session.image_info, _field(body, "image", str))
        return JSONResponse(info)

    async def image(request: Request) -> Response:
        name = request.query_params.get("name", "")
        opened = await run_in_threadpool(session.open_image, name)
        data = await run_in_threadpool(jpeg_bytes, opened.pixels)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    def prompts(body: dict[str, Any]) -> dict[str, Any]:
        return {
            "points": _field(body, "points", list, None),
            "labels": _field(body, "labels", list, None),
            "box": _field(body, "box", list, None),
        }

    async def mask(request: Request) -> Response:
        body = await _json(request)
        result = await run_in_threadpool(session.mask, _field(body, "image", str), **prompts(body))
        return JSONResponse(result)

    async def references(request: Request) -> Response:
        if request.method == "POST":
            body = await _json(request)
            listed = await run_in_threadpool(
                session.add_reference,
                _field(body, "image", str),
                _field(body, "class", str),
                **prompts(body),
            )
        else:
            listed = await run_in_threadpool(session.reference_list)
        return JSONResponse({"references": listed})

    async def remove_reference(request: Request) -> Response:
        listed = session.remove_reference(int(request.path_params["index"]))
        return JSONResponse({"references": listed})

    async def preview(request: Request) -> Response:
        body = await _json(request)
        result = await run_in_threadpool(
            session.preview,
            _field(body, "method", str),
            _field(body, "targets", str),
            _field(body, "limit", int, None),
        )
        return JSONResponse(result)

    async def jobs(request: Request) -> Response:
        if request.method == "POST":
            body = await _json(request)
            status = await run_in_threadpool(
                session.start_job,
                _field(body, "name", str),
                _field(body, "targets", str),
                _field(body, "method", str),
                _field(body, "formats", list),
            )
            return JSONResponse(status)
        return JSONResponse({"jobs": [session.jobs.status(n) for n in session.jobs.names()]})

    async def job(request: Request) -> Response:
        return JSONResponse(session.jobs.status(request.path_params["name"]))

    async def download(request: Request) -> Response:
        name = request.path_params["name"]
        path = await run_in_threadpool(session.jobs.archive, name)
        return FileResponse(path, media_type="application/zip", filename=f"{name}.zip")

    async def job_file(request: Request) -> Response:
        path = session.jobs.output_file(request.path_params["name"], request.path_params["file"])
        kind = "application/json" if path.suffix == ".json" else "text/csv"
        return FileResponse(path, media_type=kind, filename=path.name)

    routes = [
        Route("/", index),
        Route("/static/{name}", static),
        Route("/api/config", _guarded(config)),
        Route("/api/browse", _guarded(browse)),
        Route("/api/upload", _guarded(upload), methods=["POST"]),
        Route("/api/open", _guarded(open_image), methods=["POST"]),
        Route("/api/image", _guarded(image)),
        Route("/api/mask", _guarded(mask), methods=["POST"]),
        Route("/api/references", _guarded(references), methods=["GET", "POST"]),
        Route("/api/references/{index:int}", _guarded(remove_reference), methods=["DELETE"]),
        Route("/api/preview", _guarded(preview), methods=["POST"]),
        Route("/api/jobs", _guarded(jobs), methods=["GET", "POST"]),
        Route("/api/jobs/{name}", _guarded(job)),
        Route("/api/jobs/{name}/download", _guarded(download)),
        Route("/api/jobs/{name}/files/{file}", _guarded(job_file)),
    ]
    hosts = allowed_hosts or ["127.0.0.1", "localhost", "[::1]", "testserver"]
    # A page on another site cannot reach this server through a rebound host name.
    app = Starlette(
        routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)]
    )
    app.state.token = page_token
    app.state.session = session
    return app


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(session: AppSession, *, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve the page until interrupted (a non-loopback ``host`` is said in a warning)."""
    import uvicorn

    hosts = ["127.0.0.1", "localhost", "[::1]"]
    if not is_loopback(host):
        warnings.warn(
            f"serving on {host}: anyone who can reach this machine can use the page and read "
            "the images under --root",
            ProsamWarning,
            stacklevel=2,
        )
        hosts = ["*"]
    app = create_app(session, allowed_hosts=hosts)
    uvicorn.run(app, host=host, port=port, log_level="warning")
