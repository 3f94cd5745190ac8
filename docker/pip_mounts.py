"""Write this machine's effective pip configuration to one file and list the local paths it names.

    python docker/pip_mounts.py OUT.conf  > paths

docker/test-image.sh mounts OUT.conf as the build's /etc/pip.conf and every listed path at the same
place, so ``pip install`` inside the image build resolves packages exactly as pip outside it does
(the index and its certificates, local wheel folders and indexes, constraint files).  The effective
configuration is pip's own merge of its files and ``PIP_*`` variables (``pip config list``), the
variables winning, as they do for pip."""
from __future__ import annotations

import ast
import configparser
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

#: options whose values may name local files or directories
PATH_OPTIONS = {"find-links", "index-url", "extra-index-url", "constraint", "requirement", "cert", "client-cert"}
#: already mounted whole by the script
MOUNTED = (Path("/etc/ssl/certs"),)


def effective_config() -> dict[tuple[str, str], str]:
    """(section, option) -> value, as pip resolves them (environment over files)."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         check=True).stdout
    files: dict[tuple[str, str], str] = {}
    env: dict[tuple[str, str], str] = {}
    for line in out.splitlines():
        name, sep, raw = line.partition("=")
        if not sep:
            continue
        section, _, option = name.rpartition(".")
        value = ast.literal_eval(raw)  # pip prints repr()s
        if section == ":env:":
            env[("global", option)] = value
        else:
            files[(section, option)] = value
    # a variable overrides the option in every section of the files (pip's precedence), not only [global]
    env_options = {option for _, option in env}
    return {**{key: v for key, v in files.items() if key[1] not in env_options}, **env}


def local_paths(value: str) -> list[Path]:
    """The existing local paths a value names (space- or newline-separated paths and file:// URLs)."""
    paths = []
    for token in value.split():
        if token.startswith("file://"):
            path = Path(unquote(urlparse(token).path))
            if path.name == "simple":  # a PEP 503 index links to ../../files: mount its root
                path = path.parent
        elif token.startswith("/"):
            path = Path(token)
        else:
            continue
        if path.exists() and not any(path == m or m in path.parents for m in MOUNTED):
            paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docker/pip_mounts.py OUT.conf", file=sys.stderr)
        return 2
    config = effective_config()
    # configparser indents a multi-line value's continuation lines, as pip's own parser needs them
    out = configparser.ConfigParser(interpolation=None)
    paths: list[Path] = []
    for (section, option), value in sorted(config.items()):
        if not out.has_section(section):
            out.add_section(section)
        out.set(section, option, value)
        if option in PATH_OPTIONS:
            paths += [p for p in local_paths(value) if p not in paths]
    with open(argv[0], "w") as fh:
        out.write(fh)
    os.chmod(argv[0], 0o644)
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
