"""Bearer tokens: where the server keeps a generated one, and how every client finds it.

A server never runs open by accident: with no token configured (``GALAXYPAINT_ADMIN_TOKEN``) and
anonymous writes not explicitly allowed, ``galaxypaint serve`` generates one, once, before any worker
process starts, and stores it in ``<data_dir>/.galaxypaint-token`` (mode 0600) — the data directory,
never the registry, which may be baked into a container image.  The file is reused at the next start
(delete it to rotate the token).

Clients (curl examples, scripts) look for a token in this order: ``GALAXYPAINT_API_TOKEN``, then
``GALAXYPAINT_ADMIN_TOKEN``, then the token file in ``$GALAXYPAINT_DATA_DIR`` (default ``data/``).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from app.core.settings import TOKEN_FILE


def token_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / TOKEN_FILE


def read_token_file(data_dir: str | os.PathLike[str]) -> str | None:
    try:
        token = token_path(data_dir).read_text().strip()
    except OSError:
        return None
    return token or None


def load_or_create_token(data_dir: str | os.PathLike[str]) -> tuple[str, bool]:
    """(token, created): the token stored in the data directory, generating it if there is none.

    Creation is exclusive (``O_EXCL``): when several server processes start at once, one writes the
    file and the others read the same token.
    """
    path = token_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = read_token_file(data_dir)
    if existing:
        return existing, False
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race (or left an empty file: take it over)
        existing = read_token_file(data_dir)
        if existing:
            return existing, False
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)
    return token, True


def client_token(data_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The token a client should send: environment first, then the server's token file."""
    for var in ("GALAXYPAINT_API_TOKEN", "GALAXYPAINT_ADMIN_TOKEN"):
        if os.environ.get(var):
            return os.environ[var]
    return read_token_file(data_dir or os.environ.get("GALAXYPAINT_DATA_DIR", "data"))
