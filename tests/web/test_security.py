"""The web pages' security: login cookie, CSRF, CSP, escaping, scopes, the off switch (in-process client)."""

from __future__ import annotations

import re
import sqlite3
import time
from contextlib import closing

import pytest

from app.core.registry import Registry
from tests.api.conftest import SUBMIT_TOKEN, TOKEN

from .conftest import csrf_of, login

HOSTILE = "<img src=x onerror=alert(1)>"  # no quote and no slash: kept whole in a multipart file name


def _cookie_header(response) -> str:
    headers = [v for k, v in response.headers.multi_items() if k.lower() == "set-cookie"]
    assert len(headers) == 1, headers
    return headers[0]


def test_login_exchanges_the_token_for_an_httponly_strict_expiring_opaque_cookie(make_client):
    client = make_client(web_session_hours=2)
    page = client.get("/login")
    visitor = _cookie_header(page)  # a visitor's session: it carries the login form's CSRF token
    r = client.post("/login", data={"token": TOKEN, "csrf_token": csrf_of(page.text), "next": "/jobs"})
    assert r.status_code == 303 and r.headers["location"] == "/jobs"
    cookie = _cookie_header(r)
    flags = [p.strip().lower() for p in cookie.split(";")]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    assert any(f.startswith("max-age=") and 7000 < int(f.split("=")[1]) <= 7200 for f in flags), cookie
    assert "secure" not in flags  # plain http here: a Secure cookie would never come back
    value = cookie.split(";")[0].split("=", 1)[1]
    assert TOKEN not in cookie and value not in visitor  # opaque, and a new id (no session fixation)
    assert client.get("/jobs").status_code == 200
    assert "Logged in (admin scope)" in client.get("/").text


def test_the_session_cookie_is_secure_over_https_or_when_the_setting_says_so(make_client):
    """Behind a TLS proxy the server may see plain http: GALAXYPAINT_WEB_COOKIE_SECURE=true marks it anyway."""
    for overrides, base, secure in (({}, "https://testserver", True), ({"web_cookie_secure": True}, None, True),
                                    ({"web_cookie_secure": False}, "https://testserver", False)):
        client = make_client(**overrides)
        if base:
            client.base_url = base
        flags = [p.strip().lower() for p in _cookie_header(client.get("/login")).split(";")]
        assert ("secure" in flags) == secure, (overrides, base, flags)


def test_a_wrong_token_or_a_forged_cookie_gives_no_session(make_client):
    client = make_client()
    page = client.get("/login")
    r = client.post("/login", data={"token": "not-the-token", "csrf_token": csrf_of(page.text)})
    assert r.status_code == 401 and "not accepted" in r.text
    assert client.get("/jobs").status_code == 303
    client.cookies.set("galaxypaint_session", "forged-" + "a" * 40)
    assert client.get("/jobs").headers["location"] == "/login?next=/jobs"


def test_logout_ends_the_session_on_the_server(make_client):
    client = make_client()
    login(client)
    sid = client.cookies.get("galaxypaint_session")
    r = client.post("/logout", data={"csrf_token": csrf_of(client.get("/").text)})
    assert r.status_code == 303 and "galaxypaint_session=" in r.headers["set-cookie"]
    client.cookies.set("galaxypaint_session", sid)  # the old cookie, replayed
    assert client.get("/jobs").status_code == 303


def test_rotating_the_token_ends_its_sessions(make_client):
    first = make_client()
    login(first)
    sid = first.cookies.get("galaxypaint_session")
    rotated = make_client(admin_token="a-new-admin-token")  # same data directory: same session store
    rotated.cookies.set("galaxypaint_session", sid)
    assert rotated.get("/jobs").status_code == 303


@pytest.mark.parametrize("path", ["/login", "/logout", "/paint", "/models/smass-raw-stack/aliases"])
def test_a_form_without_its_csrf_token_is_refused(make_client, path):
    client = make_client()
    login(client)
    r = client.post(path, data={"token": TOKEN, "alias": "production", "version": "1"})
    assert r.status_code == 403 and "csrf_token" in r.text
    r = client.post(path, data={"token": TOKEN, "alias": "production", "version": "1", "csrf_token": "guess"})
    assert r.status_code == 403


def test_promote_needs_a_login_of_the_admin_scope(make_client, web_registry):
    client = make_client()
    form = {"alias": "staging", "version": "1"}
    page = client.get("/models/smass-raw-stack")  # a visitor: the form is there, with a CSRF token
    r = client.post("/models/smass-raw-stack/aliases", data={**form, "csrf_token": csrf_of(page.text)})
    assert r.status_code == 401 and "log in" in r.text
    login(client, SUBMIT_TOKEN)
    csrf = csrf_of(client.get("/models/smass-raw-stack").text)
    r = client.post("/models/smass-raw-stack/aliases", data={**form, "csrf_token": csrf})
    assert r.status_code == 403 and "admin token" in r.text
    registry = Registry(client.app.state.settings.registry, create=False)
    assert "staging" not in registry.get("smass-raw-stack").aliases
    login(client, TOKEN)
    csrf = csrf_of(client.get("/models/smass-raw-stack").text)
    r = client.post("/models/smass-raw-stack/aliases", data={**form, "csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/models/smass-raw-stack?moved=staging"
    assert registry.get("smass-raw-stack", alias="staging").version == 1
    page = client.get(r.headers["location"])
    assert "Alias <code>staging</code> moved" in page.text
    r = client.post("/models/smass-raw-stack/aliases", data={"alias": "1bad", "version": "1",
                                                             "csrf_token": csrf})
    assert r.status_code == 422 and "alias" in r.text


def test_pages_carry_a_csp_without_inline_script(make_client, web_registry):
    client = make_client()
    login(client)
    run_id = web_registry[2]
    for path in ("/", "/runs", f"/runs/{run_id}", "/models/smass-raw-stack", "/models/smass-raw-stack/versions/1",
                 "/predict", "/paint", "/jobs", "/login", "/models/no-such-model"):
        r = client.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp, path
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), path  # every script is a file of static/
        assert not re.search(r"""\son[a-z]+\s*=|(href|src)\s*=\s*["']?(https?:)?//""", r.text), path
    assert client.get("/models/no-such-model").status_code == 404


def test_reads_are_open_as_on_the_api_and_job_pages_need_a_login(make_client, web_registry):
    client = make_client()
    for path in ("/", "/runs", f"/runs/{web_registry[2]}", "/models/smass-raw-stack/versions/1", "/predict"):
        assert client.get(path).status_code == 200, path
    for path in ("/paint", "/jobs", "/jobs/job-0123456789ab", "/jobs/job-0123456789ab/status"):
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=/"), path
    assert client.get("/login?next=//evil.example/x").text.count('name="next" value="/"') == 1


def test_an_open_server_needs_no_login_but_still_checks_csrf(make_client):
    client = make_client(admin_token=None, api_token=None, allow_anonymous_writes=True)
    page = client.get("/paint")
    assert page.status_code == 200 and "Open server" in page.text
    r = client.post("/paint", data={"catalog": "sub/halos.parquet"})
    assert r.status_code == 403
    r = client.post("/paint", data={"catalog": "sub/halos.parquet", "csrf_token": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"].startswith("/jobs/job-")


def test_hostile_file_and_column_names_are_shown_as_text(make_client, web_registry):
    from .test_pages import catalog_csv

    client = make_client()
    login(client)
    csrf = csrf_of(client.get("/paint").text)
    body = catalog_csv(20)
    r = client.post("/paint", data={"csrf_token": csrf, "output_format": "csv"},
                    files={"file": (HOSTILE + ".csv", body, "text/csv")})
    assert r.status_code == 303, r.text
    page = client.get(r.headers["location"]).text
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;.csv" in page
    # a column mapping naming a hostile column: the API's error message quotes it, the page escapes it
    r = client.post("/paint", data={"csrf_token": csrf, "columns": f"M_h={HOSTILE}"},
                    files={"file": ("halos.csv", body, "text/csv")})
    if r.status_code == 303:  # accepted, then failed by the job: its error names the column
        job_url = r.headers["location"]
        for _ in range(300):
            page = client.get(job_url).text
            if "status-failed" in page:
                break
            time.sleep(0.1)
    else:
        page = r.text
    assert HOSTILE not in page and "&lt;img src=x" in page


def test_the_setting_turns_the_pages_off(make_client):
    client = make_client(web_ui=False)
    for path in ("/", "/runs", "/predict", "/login", "/paint", "/static/app.css"):
        assert client.get(path).status_code == 404, path
    assert client.post("/login", data={"token": TOKEN}).status_code == 404
    assert client.get("/v1/models").status_code == 200  # the API is unchanged
    assert client.get("/openapi.json").json()["paths"].keys() == make_client().get("/openapi.json").json()[
        "paths"].keys()  # and the pages never appear in its schema


def test_the_paint_form_takes_uploads_as_large_as_the_api_does():
    from app.api.middleware import SMALL_BODY, body_limit
    from app.core.settings import Settings

    settings = Settings(max_upload_bytes=50 * 2**20)
    assert body_limit(settings, "POST", "/paint") == body_limit(settings, "POST", "/v1/jobs/paint") > 50 * 2**20
    assert body_limit(settings, "POST", "/login") == SMALL_BODY


def test_reading_pages_without_a_cookie_writes_nothing_to_the_data_directory(make_client):
    """A server on a read-only data directory still serves the read-only pages to visitors."""
    client = make_client()
    data = client.app.state.settings.data_dir
    for path in ("/", "/runs", "/predict"):
        assert client.get(path).status_code == 200
    assert not list(data.glob(".galaxypaint-web*"))
    client.get("/login")
    assert (data / ".galaxypaint-web.sqlite").exists()


def test_visitors_sessions_are_bounded_and_never_end_a_login(make_client, monkeypatch, tmp_path):
    """Anonymous page views make sessions (for the forms' CSRF tokens): beyond the cap, the oldest visitors'
    sessions make room; logged-in sessions are neither evicted nor counted."""
    from app.web import session

    monkeypatch.setattr(session, "MAX_VISITOR_SESSIONS", 3)
    store = session.SessionStore(tmp_path, 3600.0)
    admin = store.create("admin", "d" * 64)
    visitors = [store.create() for _ in range(7)]
    logins = [store.create("submit", "e" * 64) for _ in range(4)]  # more than the cap: all kept
    assert [store.get(v.sid) is not None for v in visitors] == [False] * 4 + [True] * 3
    assert all(store.get(s.sid) is not None for s in (admin, *logins))
    with closing(sqlite3.connect(tmp_path / session.DB_FILE)) as db:
        rows = dict(db.execute("SELECT scope, COUNT(*) FROM web_sessions GROUP BY scope").fetchall())
    assert rows == {"": 3, "admin": 1, "submit": 4}

    # through the pages: a logged-in browser stays logged in while visitors come and go
    client = make_client()
    login(client)
    logged_in = dict(client.cookies)
    forms = []  # (CSRF token, cookies) of five visitors' login forms
    for _ in range(5):
        client.cookies.clear()
        csrf = csrf_of(client.get("/login").text)
        forms.append((csrf, dict(client.cookies)))
    with closing(sqlite3.connect(client.app.state.settings.data_dir / session.DB_FILE)) as db:
        assert db.execute("SELECT COUNT(*) FROM web_sessions WHERE scope = ''").fetchone()[0] == 3
    for i, (csrf, cookies) in enumerate(forms):  # an evicted visitor's form asks to be reloaded
        client.cookies.clear()
        client.cookies.update(cookies)
        r = client.post("/login", data={"token": "wrong", "csrf_token": csrf})
        assert r.status_code == (403 if i < 2 else 401), i
    client.cookies.clear()
    client.cookies.update(logged_in)
    assert client.get("/jobs").status_code == 200


def test_pages_with_forms_are_shown_when_sessions_cannot_be_stored(make_client, monkeypatch):
    """A data directory the server cannot write (read-only volume): every page still renders; its forms
    are refused (403) rather than the page failing.  Simulated: tests run as root, which writes anyway."""
    from sqlalchemy.exc import OperationalError

    from app.web import session

    def broken(self, *args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("attempt to write a readonly database"))

    monkeypatch.setattr(session.SessionStore, "create", broken)
    client = make_client()
    for path in ("/login", "/models/smass-raw-stack", "/"):
        r = client.get(path)
        assert r.status_code == 200, (path, r.status_code)
        assert "galaxypaint_session" not in r.headers.get("set-cookie", "")
    r = client.post("/login", data={"token": TOKEN, "csrf_token": ""})
    assert r.status_code == 403
