"""Check a galaxypaint service running from the built image against the same work done outside it.

Run by docker/test-image.sh once the image serves (see there); exits non-zero with one line per
failed check.  The service's registry and data directory are the host's ``--registry`` and
``--data-dir`` mounted into the image, so the local commands read the very same files."""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from app.client import Client
from app.core.catalogs import read_table
from app.core.schema import FEATURE_NAMES
from app.core.tokens import read_token_file


def wait_ready(url: str, log: Path, pid: int, timeout: float = 180.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and _alive(pid):
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    state = f"not ready after {timeout:.0f} s" if _alive(pid) else "exited"
    sys.exit(f"docker/test-image.sh: the image's server {state}; its log ends:\n"
             + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/status").read_text().count("State:\tZ")


def local(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"local galaxypaint {args[0]} failed: {proc.stderr.strip().splitlines()[-1:]}")


def max_diff(a: pd.DataFrame, b: pd.DataFrame, columns: list[str]) -> float:
    if len(a) != len(b):
        return float("inf")
    return max(float(np.max(np.abs(a[c].to_numpy() - b[c].to_numpy()))) for c in columns)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True)
    ap.add_argument("--registry", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--catalog", required=True, help="a catalog in the data directory")
    ap.add_argument("--healthcheck", required=True, help="command running the image's health check")
    ap.add_argument("--whoami", required=True, help="command printing the image's uid")
    ap.add_argument("--server-log", type=Path, required=True)
    ap.add_argument("--server-pid", type=int, required=True, help="the serving process (buildah run)")
    ap.add_argument("--image-size", default="?")
    ap.add_argument("--tolerance", type=float, default=1e-9, help="largest allowed difference to local results")
    a = ap.parse_args()
    failures: list[str] = []

    ready = wait_ready(a.url, a.server_log, a.server_pid)
    print(f"[image] serving: ready after {ready:.1f} s")
    uid = subprocess.run(shlex.split(a.whoami), capture_output=True, text=True).stdout.strip()
    if uid != "10001":
        failures.append(f"the image runs as uid {uid!r}, not 10001")
    health = subprocess.run(shlex.split(a.healthcheck), capture_output=True, text=True)
    print(f"[image] entrypoint healthcheck: exit {health.returncode}; runs as uid {uid}")
    if health.returncode:
        failures.append(f"the image's healthcheck exited {health.returncode}: {health.stderr.strip()[-300:]}")

    # the web pages: templates and static files are package data, which only a non-editable install shows
    page, css = httpx.get(f"{a.url}/", timeout=10), httpx.get(f"{a.url}/static/app.css", timeout=10)
    print(f"[image] web pages: / {page.status_code} ({len(page.content):,} bytes), /static/app.css {css.status_code}")
    if page.status_code != 200 or "Model registry" not in page.text or css.status_code != 200:
        failures.append(f"the web pages are not served from the image (/ {page.status_code}, css {css.status_code})")

    token = read_token_file(a.data_dir)  # written by the server, as the image's user, in the mounted directory
    if not token:
        failures.append("the server wrote no token file into the mounted data directory")
    catalog = read_table(a.data_dir / a.catalog)
    with Client(a.url, token=token) as client, tempfile.TemporaryDirectory() as tmp:
        models = client.models()
        sample = catalog.iloc[:64].reset_index(drop=True)
        remote = client.predict(sample[list(FEATURE_NAMES)])
        sample.to_parquet(Path(tmp, "sample.parquet"), index=False)
        local(["predict", "--data", str(Path(tmp, "sample.parquet")), "--registry", str(a.registry),
               "--out", str(Path(tmp, "local_predict.parquet"))])
        expected = read_table(Path(tmp, "local_predict.parquet"))
        outputs = [c for c in remote.columns if c.endswith("_pred")]
        d = max_diff(remote, expected, outputs) if outputs else float("inf")
        print(f"[image] /v1/predict, {len(sample)} halos, {len(models)} models listed: {', '.join(outputs)}; "
              f"largest difference to local predict {d:.3g}")
        if not d <= a.tolerance:
            failures.append(f"the image's prediction differs from the local one by {d:.3g}")

        t0 = time.monotonic()
        job = client.paint(catalog=a.catalog, wait=False)
        job = client.wait(job, progress=False, timeout=600)
        seconds = time.monotonic() - t0
        if job["status"] != "succeeded":
            failures.append(f"the paint job ended {job['status']}: {job.get('error')}")
        else:
            painted = client.download(job, Path(tmp, "painted.parquet"))
            remote_paint = read_table(painted)
            local(["paint", "--catalog", str(a.data_dir / a.catalog), "--registry", str(a.registry),
                   "--out", str(Path(tmp, "local_paint.parquet"))])
            expected = read_table(Path(tmp, "local_paint.parquet"))
            columns = [c for c in expected.columns if c.endswith("_pred")]
            d = max_diff(remote_paint, expected, columns) if columns else float("inf")
            in_data = [p.relative_to(a.data_dir) for p in a.data_dir.rglob("*") if p.is_file()
                       and p.stat().st_size == painted.stat().st_size and p.read_bytes() == painted.read_bytes()]
            print(f"[image] paint job {job['id']} of {len(catalog):,} halos from the mounted data directory: "
                  f"{job['status']} in {seconds:.1f} s; written in the data directory as "
                  f"{', '.join(map(str, in_data)) or '(not found)'}; largest difference to local paint {d:.3g}")
            if not d <= a.tolerance:
                failures.append(f"the image's painted catalog differs from the local one by {d:.3g}")
            if not in_data:
                failures.append("the paint job's output is not in the mounted data directory")
            # P(k) of the painted catalog against the truth: the FFT, the spectra files and the figure
            t0 = time.monotonic()
            pk = client.pk(job, out=Path(tmp, "pk"), truth=a.catalog, nmesh=64, progress=False)
            figure = pk.get("files", {}).get("figure")
            png = figure is not None and Path(figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            print(f"[image] P(k) job on the painted catalog: {len(pk.get('files', {}))} result files in "
                  f"{time.monotonic() - t0:.1f} s, figure {'a PNG' if png else 'missing'}")
            if not png:
                failures.append(f"the P(k) job made no PNG figure: {sorted(pk)}")
    print(f"[image] image size {a.image_size}")
    for f in failures:
        print(f"docker/test-image.sh: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
