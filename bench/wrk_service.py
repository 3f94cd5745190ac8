"""The service under many clients, measured by ``wrk`` with the server and the load generator on separate cores.

    python bench/wrk_service.py --registry models [--duration 10] [--server-cpus 0] [--client-cpus 1]

Starts ``galaxypaint serve`` on the registry (logging and metrics as configured: on by default) pinned
with ``taskset`` to ``--server-cpus``, and runs ``wrk`` (Debian package ``wrk``) pinned to
``--client-cpus`` against ``/v1/predict`` with single-halo JSON requests for every production target:

* 1 connection, then ``--clients`` connections (default 50): requests/s and latency percentiles;
* mixed: the same single-halo load on ``--clients`` minus a tenth of the connections, and batches of
  ``--batch-halos`` halos on that tenth, at once (two ``wrk`` processes); the single-halo latencies
  are those of the first, the measured share of batch requests is printed.

The figures are printed beside the goals of ``bench/README.md`` (>= 1,000 requests/s and p99 <=
100 ms at 50 clients, no less throughput at 50 clients than at 1, single-halo p99 <= 250 ms with
batches mixed in); this script decides nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SINGLE = {"M_h": 12.0, "C_h": 1.0, "S_h": 0.04, "z_h": 1.2, "Delta3_h": 3.0}
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def lua(body: dict) -> str:
    text = json.dumps(body).replace("\\", "\\\\").replace("'", "\\'")
    return ('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = '{text}'\n")


def batch_body(n: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    halos = [{"M_h": float(m), "C_h": 1.0, "S_h": 0.04, "z_h": 1.2, "Delta3_h": 3.0}
             for m in rng.uniform(11.0, 13.5, n)]
    return {"halos": halos}


def wrk(cpus: str, connections: int, seconds: float, script: Path, url: str) -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency",
                             "-s", str(script), url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def parse(out: str) -> dict:
    """requests/s, total requests, non-2xx and the latency percentiles (ms) of one ``wrk --latency`` run."""
    def ms(value: str) -> float:
        m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
        return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")

    res = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
           "requests": int(re.search(r"(\d+) requests in", out).group(1)),
           "errors": int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0}
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res[f"p{pct}"] = ms(m.group(1)) if m else float("nan")
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", required=True, help="registry to serve")
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--batch-halos", type=int, default=1000)
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list of the server (default 0)")
    parser.add_argument("--client-cpus", default="1", help="taskset CPU list of wrk (default 1)")
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: apt-get install {'wrk' if tool == 'wrk' else 'util-linux'})")

    tmp = Path(tempfile.mkdtemp(prefix="galaxypaint-wrk-"))
    single, batch = tmp / "single.lua", tmp / "batch.lua"
    single.write_text(lua({"halos": [SINGLE]}))
    batch.write_text(lua(batch_body(args.batch_halos)))
    url = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "GALAXYPAINT_DATA_DIR": str(tmp / "data")}
    log = open(tmp / "serve.log", "w")
    server = subprocess.Popen(["taskset", "-c", args.server_cpus, sys.executable, "-m", "app.cli", "serve",
                               "--registry", args.registry, "--port", str(args.port)],
                              stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not become ready; its log: {tmp / 'serve.log'}")
            time.sleep(0.5)
        predict = f"{url}/v1/predict"
        subprocess.run(["wrk", "-t1", "-c4", "-d2s", "-s", str(single), predict], capture_output=True)  # warm-up
        print(f"server on CPUs {args.server_cpus}, wrk on CPUs {args.client_cpus}, {args.duration:g} s per run; "
              "single-halo /v1/predict, every production target")
        print(f"{'run':34s} {'req/s':>8s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'non-2xx':>8s}")
        rows = {}
        for c in (1, args.clients):
            out, _ = wrk(args.client_cpus, c, args.duration, single, predict).communicate()
            rows[c] = parse(out)
        n_batch = max(1, args.clients // 10)
        singles = wrk(args.client_cpus, args.clients - n_batch, args.duration, single, predict)
        batches = wrk(args.client_cpus, n_batch, args.duration, batch, predict)
        mixed, mixed_batch = parse(singles.communicate()[0]), parse(batches.communicate()[0])
        for name, r in ((f"1 client", rows[1]), (f"{args.clients} clients", rows[args.clients]),
                        (f"mixed: {args.clients - n_batch} single-halo clients", mixed),
                        (f"mixed: {n_batch} clients of {args.batch_halos}-halo batches", mixed_batch)):
            print(f"{name:34s} {r['rps']:8.0f} {r['p50']:8.1f} {r['p90']:8.1f} {r['p99']:8.1f} {r['errors']:8d}")
        share = mixed_batch["requests"] / max(1, mixed_batch["requests"] + mixed["requests"])
        print(f"\nbatch requests in the mixed run: {100 * share:.1f} % of all")
        print(f"{args.clients} clients: {rows[args.clients]['rps']:.0f} requests/s (goal >= 1,000), p99 "
              f"{rows[args.clients]['p99']:.1f} ms (goal <= 100); throughput {args.clients} / 1 clients = "
              f"{rows[args.clients]['rps'] / rows[1]['rps']:.2f} (goal >= 1); mixed single-halo p99 "
              f"{mixed['p99']:.1f} ms (goal <= 250)")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
