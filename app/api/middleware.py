"""The one ASGI middleware in front of every route: request id, access log, metrics, body limits, origin guard.

Body limits are enforced before anything is parsed or spooled: a declared ``Content-Length`` over the
route's limit is answered 413 without reading a byte, and a body streamed without one (or lying about
it) is counted as it arrives and cut off at the limit.  ``Content-Encoding: gzip`` JSON bodies are
inflated here, in bounded steps, and the limit applies to the inflated size (a 1 MB bomb cannot become
1 GB in memory); other encodings are refused (415).

The origin guard closes the cross-site path: a browser always sends ``Origin`` (and ``Sec-Fetch-Site``)
on a cross-site POST, and a plain HTML form or a multipart upload needs no CORS preflight.  A
state-changing request from another origin is refused (403), whatever its content type or transport.
"""

from __future__ import annotations

import json
import time
import zlib
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.observability import REQUEST_ID, Metrics, log, request_id_from
from app.core.settings import Settings

SMALL_BODY = 1 << 20  # every route that takes no catalog and no batch of halos
MULTIPART_OVERHEAD = 1 << 20  # form fields and part headers around an uploaded file
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
_INFLATE_STEP = 1 << 16


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a body passes its route's limit (FastAPI re-raises HTTPExceptions)."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__(413, f"body: the {what} is larger than this route's limit of {limit:,} bytes")


def body_limit(settings: Settings, method: str, path: str) -> int:
    """The largest request body a route accepts, in bytes (decompressed)."""
    if method == "POST" and path in ("/v1/jobs/paint", "/paint"):  # /paint: the web page's upload (app.web)
        return settings.max_upload_bytes + MULTIPART_OVERHEAD
    if method == "POST" and (path == "/v1/predict" or (path.startswith("/v2/models/") and path.endswith("/infer"))):
        return settings.max_json_bytes
    return SMALL_BODY


def _json_response(status: int, key: str, message: str, request_id: str) -> tuple[Message, Message]:
    body = json.dumps({key: message, "request_id": request_id}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"x-request-id", request_id.encode())]}
    return start, {"type": "http.response.body", "body": body}


def _cross_origin(headers: dict[bytes, bytes]) -> bool:
    if headers.get(b"sec-fetch-site", b"") == b"cross-site":
        return True
    origin = headers.get(b"origin")
    if origin is None:
        return False
    if origin == b"null":  # sandboxed frames and file:// pages: never our own pages
        return True
    netloc = urlsplit(origin.decode("latin-1")).netloc.lower()
    return netloc != headers.get(b"host", b"").decode("latin-1").lower()


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = request_id_from(headers.get(b"x-request-id", b"").decode("latin-1") or None)
        token = REQUEST_ID.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        method, path = scope["method"], scope["path"]
        key = "error" if path.startswith("/v2") else "detail"
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        async def refuse(code: int, message: str) -> None:
            start, body = _json_response(code, key, message, rid)
            status["code"] = code
            await send(start)
            await send(body)

        try:
            if method in _UNSAFE and _cross_origin(headers):
                await refuse(403, "origin: state-changing requests from other web origins are refused")
                return
            limit = body_limit(self.settings, method, path)
            declared = headers.get(b"content-length")
            if declared is not None:
                if not declared.isdigit():
                    await refuse(400, "content-length: not a number")
                    return
                if int(declared) > limit:
                    await refuse(413, f"body: {int(declared):,} bytes declared, this route's limit is {limit:,}")
                    return
            encoding = headers.get(b"content-encoding", b"identity").strip().lower()
            if encoding not in (b"identity", b"", b"gzip"):
                await refuse(415, f"content-encoding: {encoding.decode('latin-1')!r} is not supported "
                                  "(identity or gzip)")
                return
            inflate = encoding == b"gzip"
            if inflate:  # the app sees the inflated body: drop the headers that describe the wire form
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"]
                                              if k not in (b"content-encoding", b"content-length")]}
            await self.app(scope, _limited(receive, limit, inflate), send_with_id)
        finally:
            elapsed = time.perf_counter() - t0
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(method, route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            log.info("%s %s %d", method, path, status["code"],
                     extra={"fields": {"method": method, "path": path, "status": status["code"],
                                       "ms": round(elapsed * 1e3, 2),
                                       "client": (scope.get("client") or ("-",))[0]}})
            REQUEST_ID.reset(token)


def _limited(receive: Receive, limit: int, inflate: bool) -> Receive:
    """``receive`` counting (and, for gzip, inflating in bounded steps) the body; BodyTooLarge past ``limit``."""
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS) if inflate else None
    size = 0
    what = "inflated body" if inflate else "body"

    def count(piece: bytes) -> bytes:
        nonlocal size
        size += len(piece)
        if size > limit:
            raise BodyTooLarge(limit, what)
        return piece

    async def wrapped() -> Message:
        message = await receive()
        if message["type"] != "http.request":
            return message
        body = message.get("body", b"")
        if decoder is None:
            return {**message, "body": count(body)}
        pieces = []
        try:
            while body:
                pieces.append(count(decoder.decompress(body, _INFLATE_STEP)))
                body = decoder.unconsumed_tail
            if not message.get("more_body", False):
                pieces.append(count(decoder.flush()))
        except zlib.error:
            raise HTTPException(400, "body: not valid gzip data (Content-Encoding: gzip)") from None
        return {**message, "body": b"".join(pieces)}

    return wrapped
