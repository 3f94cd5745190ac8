"""Rendering the pages, and what every page answer carries: its security headers, its session cookie,
its CSRF check, and errors mapped to an HTML page once.

Templates and static files are package data (``app/web/templates``, ``app/web/static``), loaded through
the package, so a wheel installed anywhere (the Docker image) has them; nothing is fetched from another
origin.  Jinja2 autoescapes everything: file names, column names and error messages, which users
supply, are always shown as text.  The Content-Security-Policy allows scripts, styles, images and
fetches from this origin only, and no inline script: the little JavaScript there is lives in
``static/``, and every page works without it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from app import __version__
from app.api.dataplane import DataPlaneError
from app.api.errors import status_of, validation_message
from app.api.jobs import JobError
from app.api.observability import log
from app.core.catalogs import CatalogError
from app.core.registry import RegistryError
from app.core.schema import quantile_column
from app.web import session

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY",
                    # pages hold CSRF tokens and what a login may see: never kept by a shared cache
                    "Cache-Control": "no-store"}


def _number(value: Any, spec: str = ".4g") -> str:
    """A metric as text; "—" when absent or not finite (a run may lack a metric)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "—"
    return format(value, spec)


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    for unit, step in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= step:
            return f"{n / step:.1f} {unit}"
    return f"{n} B"


def _environment() -> Environment:
    # autoescape on for every template; lenient undefined values: a registry written by an older release
    # may lack a field (a run's preset), which a page shows as "—" rather than failing
    env = Environment(loader=PackageLoader("app.web", "templates"), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(num=_number, size=_size, pretty=lambda v: json.dumps(v, indent=2, sort_keys=True, default=str))
    env.globals.update(version=__version__, quantile_column=quantile_column)
    return env


templates = Jinja2Templates(env=_environment())


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """A page; its forms get the session's CSRF token (a visitor's session is made if need be)."""
    needs_csrf = context.pop("forms", False)
    csrf = session.ensure(request).csrf if needs_csrf else getattr(session.current(request), "csrf", "")
    return templates.TemplateResponse(request, template, {"scope": session.scope_of(request), "csrf_token": csrf,
                                                      "csrf_field": session.CSRF_FIELD, **context},
                                      status_code=status_code)


def error_page(request: Request, status: int, message: str) -> Response:
    rid = request.scope.get("state", {}).get("request_id", "-")
    return render(request, "error.html", status_code=status, status=status, message=message, request_id=rid)


def error_of(exc: Exception) -> tuple[int, str] | None:
    """(status, message) of a known error, mapped as the API maps it (``app.api.errors``)."""
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail)
    if isinstance(exc, RequestValidationError):
        return 422, validation_message(exc)
    if isinstance(exc, ValidationError):  # a request model the route builds from form fields
        return 422, "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
    if isinstance(exc, DataPlaneError):
        return exc.status, f"{exc.field}: {exc}" if exc.field else str(exc)
    if isinstance(exc, RegistryError):
        return status_of(exc), f"model: {exc}"
    if isinstance(exc, CatalogError):
        return 422, f"catalog: {exc}"
    if isinstance(exc, JobError):
        return 404, f"job_id: {exc}"
    return None


def local_path(path: str) -> str:
    """``path`` if it is a path on this site (never ``//host``: no open redirect), else "/"."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(local_path(target), safe='/')}", status_code=303)


class WebRoute(APIRoute):
    """Every page route: CSRF check of state-changing requests before the route runs, errors as HTML
    pages, security headers and the session cookie on whatever is answered."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        route = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                if request.method == "POST":
                    # the form is parsed (and cached on the request) once; the route reads the same
                    form = await request.form()
                    if not session.csrf_valid(request, form.get(session.CSRF_FIELD)):
                        raise HTTPException(403, f"{session.CSRF_FIELD}: this form's CSRF token is missing or does "
                                                 "not belong to your session; reload the page and submit it again")
                response = await route(request)
            except session.LoginRequired:
                response = login_redirect(request) if request.method == "GET" else error_page(
                    request, 401, "authorization: log in first (the link at the top of the page)")
            except Exception as exc:  # noqa: BLE001 - every error becomes a page; unknown ones are logged
                known = error_of(exc)
                if known is None:
                    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
                    known = (500, "internal error: the server could not answer this request; quote the request id "
                                  "to its operator")
                response = error_page(request, *known)
            _finish(request, response)
            return response

        return handler


def _secure(request: Request) -> bool:
    """Whether the session cookie is marked Secure: the setting, else whether this request came over HTTPS."""
    forced = getattr(request.app.state.settings, "web_cookie_secure", None)
    return forced if forced is not None else request.url.scheme == "https"


def _finish(request: Request, response: Response) -> None:
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    new = getattr(request.state, "web_session", None)
    if new is not None and new.new:
        response.set_cookie(session.COOKIE, new.sid, max_age=int(new.expires - time.time()),
                            path="/", httponly=True, samesite="strict", secure=_secure(request))
    elif getattr(request.state, "web_logout", False):
        response.delete_cookie(session.COOKIE, path="/", httponly=True, samesite="strict",
                               secure=_secure(request))
