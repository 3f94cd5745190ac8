"""Browser sessions: a login exchanges the API token for an opaque cookie, and forms carry a CSRF token.

A browser cannot attach ``Authorization: Bearer`` to a plain form, so ``POST /login`` checks the token
once and answers a session cookie: a random id (``secrets.token_urlsafe``), ``HttpOnly`` (no script
reads it), ``SameSite=Strict`` (no other site's page sends it), ``Secure`` when the request came over
HTTPS, expiring after ``web_session_hours``.  The cookie carries no token and no scope: the server keeps
each session in ``<data_dir>/.galaxypaint-web.sqlite`` (hidden, so jobs can never read it as a catalog)
under the sha256 of its id, with the scope, the sha256 of the token it was made with and its CSRF token.
A SQLite file rather than memory: ``galaxypaint serve --workers N`` runs several processes, and a
logout must end the session in all of them.  A session is worth what its token is worth now: its
token digest is matched against the tokens in force at every request (``deps.authorize`` then applies
the API's scope rules), so rotating a token ends every session made with it.

Every state-changing form carries the session's CSRF token (synchronizer pattern), checked by
``app.web.render.WebRoute`` before the route runs.  Visitors who have not logged in get a session
without a scope when a page with a form is rendered (the login form is a state-changing form too).
Those rows are made by anyone who can reach the server, without a token, so their number is bounded:
beyond ``MAX_VISITOR_SESSIONS`` live ones, making a visitor's session ends the oldest visitors' sessions
(whose forms then ask to be reloaded); logged-in sessions are never ended to make room for visitors.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.api.deps import Caller, Scope, Tokens, authorize
from app.api.observability import log
from app.core.db import make_engine

COOKIE = "galaxypaint_session"
CSRF_FIELD = "csrf_token"
DB_FILE = ".galaxypaint-web.sqlite"
#: a visitor's session (no login yet: it only carries the CSRF token of the login form) lasts this long
VISITOR_SECONDS = 3600.0
#: at most this many visitors' sessions live at once (anonymous page views must not grow the file without bound)
MAX_VISITOR_SESSIONS = 10_000


@dataclass(frozen=True)
class Session:
    sid: str  # the cookie's value; only its sha256 is stored
    csrf: str
    scope: str  # "admin", "submit", or "" for a visitor who has not logged in
    token_digest: str  # sha256 of the token the login presented ("" for a visitor)
    expires: float  # unix time
    new: bool = False  # made by this request: its cookie must be set on the response


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class SessionStore:
    """Sessions in a small SQLite file of the data directory, shared by every worker process."""

    def __init__(self, data_dir: str | Path, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        # the file is made at the first session, not at start-up: a server whose data directory is read-only
        # still starts and serves every page a visitor without a cookie reads
        self.engine = make_engine(Path(data_dir) / DB_FILE)
        self._ready = False

    def _table(self) -> None:
        if not self._ready:
            with self.engine.begin() as conn:
                conn.execute(text("CREATE TABLE IF NOT EXISTS web_sessions (sid_hash VARCHAR(64) PRIMARY KEY, "
                                  "csrf VARCHAR(64) NOT NULL, scope VARCHAR(16) NOT NULL, "
                                  "token_digest VARCHAR(64) NOT NULL, expires FLOAT NOT NULL)"))
                conn.execute(text("CREATE INDEX IF NOT EXISTS web_sessions_scope_expires "
                                  "ON web_sessions (scope, expires)"))
            self._ready = True

    def create(self, scope: str = "", token_digest: str = "") -> Session:
        lifetime = self.lifetime_s if scope else min(self.lifetime_s, VISITOR_SECONDS)
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), scope, token_digest,
                          time.time() + lifetime, new=True)
        self._table()
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM web_sessions WHERE expires < :now"), {"now": time.time()})
            if not scope:  # room for one more visitor: the newest MAX_VISITOR_SESSIONS - 1 others are kept
                conn.execute(text("DELETE FROM web_sessions WHERE sid_hash IN (SELECT sid_hash FROM web_sessions "
                                  "WHERE scope = '' ORDER BY expires DESC, rowid DESC LIMIT -1 OFFSET :keep)"),
                             {"keep": max(MAX_VISITOR_SESSIONS - 1, 0)})
            conn.execute(text("INSERT INTO web_sessions VALUES (:h, :csrf, :scope, :digest, :expires)"),
                         {"h": _digest(session.sid), "csrf": session.csrf, "scope": scope, "digest": token_digest,
                          "expires": session.expires})
        return session

    def get(self, sid: str | None) -> Session | None:
        """The live session of a cookie value, or None (unknown, expired, or ended by a logout)."""
        if not sid or len(sid) > 128:
            return None
        try:
            self._table()
            with self.engine.connect() as conn:
                row = conn.execute(text("SELECT csrf, scope, token_digest, expires FROM web_sessions "
                                        "WHERE sid_hash = :h"), {"h": _digest(sid)}).first()
        except SQLAlchemyError:  # no sessions file to be had (read-only data directory): no session
            return None
        if row is None or row.expires < time.time():
            return None
        return Session(sid, row.csrf, row.scope, row.token_digest, row.expires)

    def delete(self, sid: str) -> None:
        self._table()
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM web_sessions WHERE sid_hash = :h"), {"h": _digest(sid)})


def store_of(request: Request) -> SessionStore:
    return request.app.state.web_sessions


def current(request: Request) -> Session | None:
    """This request's session (cached on the request: several steps ask)."""
    if not hasattr(request.state, "web_session"):
        request.state.web_session = store_of(request).get(request.cookies.get(COOKIE))
    return request.state.web_session


def ensure(request: Request) -> Session:
    """This request's session, a visitor's one made now if there is none (for a page with a form)."""
    session = current(request)
    if session is None:
        try:
            session = request.state.web_session = store_of(request).create()
        except SQLAlchemyError as exc:  # e.g. a read-only data directory: the page is still shown
            log.warning("web sessions cannot be stored (%s): the page's forms will be refused", exc.__class__.__name__)
            return Session("", "", "", "", 0.0)
    return session


def login(request: Request, token: str) -> Caller:
    """Exchange a token for a fresh session (a new id: the visitor's id is never promoted, so a cookie
    planted before the login is worthless after it); the 401/403 of the API for a wrong token."""
    tokens: Tokens = request.app.state.tokens
    who = authorize(tokens, token, "submit", _client(request))
    old = current(request)
    if old is not None:
        store_of(request).delete(old.sid)
    request.state.web_session = store_of(request).create(who.scope, _digest(token) if token else "")
    return who


def logout(request: Request) -> None:
    session = current(request)
    if session is not None:
        store_of(request).delete(session.sid)
    request.state.web_session = None
    request.state.web_logout = True


def caller(request: Request, required: Scope) -> Caller:
    """The session's caller for ``required``, by the API's rules; ``LoginRequired`` without a usable login."""
    tokens: Tokens = request.app.state.tokens
    client = _client(request)
    if tokens.admin is None and tokens.submit is None:  # anonymous writes allowed: as open as the API
        return authorize(tokens, "", required, client)
    session = current(request)
    given = _presented(tokens, session)
    if given is None:
        raise LoginRequired(required)
    return authorize(tokens, given, required, client)


def scope_of(request: Request) -> str:
    """What the pages may offer this visitor: "admin", "submit", "anonymous" (open server) or ""."""
    try:
        return caller(request, "submit").scope
    except HTTPException:
        return ""


def _presented(tokens: Tokens, session: Session | None) -> str | None:
    """The token in force that the session's login presented; None if it has changed since (rotated)."""
    if session is None or not session.token_digest:
        return None
    for token in (tokens.admin, tokens.submit):
        if token is not None and secrets.compare_digest(_digest(token), session.token_digest):
            return token
    return None


def csrf_valid(request: Request, given: object) -> bool:
    session = current(request)
    return (session is not None and isinstance(given, str) and bool(given)
            and secrets.compare_digest(given.encode(), session.csrf.encode()))


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


class LoginRequired(HTTPException):
    """No usable login for a page that needs one: pages redirect to the login form, forms answer 401."""

    def __init__(self, required: str) -> None:
        super().__init__(401, f"authorization: log in with a token of the {required} scope (the API token, or "
                              "the admin token) to use this page")
