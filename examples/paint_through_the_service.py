"""Paint a halo catalog through a running galaxypaint service, and check it against local painting.

Run it against a server (``galaxypaint serve --registry models``):

    python examples/paint_through_the_service.py http://127.0.0.1:8000 --registry models

The URL may also come from ``$GALAXYPAINT_URL`` and the registry from ``$GALAXYPAINT_REGISTRY``; the
bearer token is found as every client finds it (``$GALAXYPAINT_API_TOKEN``, ``$GALAXYPAINT_ADMIN_TOKEN``,
then the server's token file) or given with ``--token``.  The script exits 0 when the service's
catalog equals the local one to 1e-12, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from app.client import Client
from app.core.catalogs import read_table

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("url", nargs="?", default=os.environ.get("GALAXYPAINT_URL"), help="the service's URL")
parser.add_argument("--registry", default=os.environ.get("GALAXYPAINT_REGISTRY"),
                    help="the registry the server serves, for the local painting")
parser.add_argument("--catalog", help="a halo catalog to paint (default: the built-in catalog)")
parser.add_argument("--n", type=int, default=20_000, help="halos of the built-in catalog (default 20,000)")
parser.add_argument("--token", help="bearer token (default: environment, then the server's token file)")
args = parser.parse_args()
if not args.url or not args.registry:
    parser.error("give the service's URL and its registry (arguments or $GALAXYPAINT_URL, $GALAXYPAINT_REGISTRY)")

work = Path(tempfile.mkdtemp(prefix="galaxypaint-example-"))


def galaxypaint(*cli_args: str) -> None:
    """Run the ``galaxypaint`` command line as a user would."""
    subprocess.run([sys.executable, "-m", "app.cli", *cli_args], check=True)


# ## 1. A catalog
# Either the one given, or the built-in TNG300-like catalog (halo features, positions and true galaxy
# properties), written to a Parquet file.
if args.catalog:
    catalog = Path(args.catalog)
else:
    catalog = work / "halos.parquet"
    galaxypaint("demo-data", "--out", str(catalog), "--n", str(args.n), "--seed", "42")

# ## 2. Connect to the service
# The client finds its token itself; `models()` lists what the server serves.
gp = Client(args.url, token=args.token)
served = gp.models()
print(f"{args.url} serves", ", ".join(f"{m['name']}/{m['latest_version']}" for m in served))

# ## 3. Paint through the service
# The catalog is uploaded as a paint job; the progress bar follows the job; the painted catalog comes
# back as a DataFrame: the input columns plus one `<target>_pred` column per served target.
remote = gp.paint(catalog)
predicted = [c for c in remote.columns if c.endswith("_pred")]
print(f"the service painted {len(remote):,} halos: {', '.join(predicted)}")

# ## 4. Paint the same catalog locally, with the same registry
local_path = work / "painted-locally.parquet"
galaxypaint("paint", "--catalog", str(catalog), "--out", str(local_path), "--registry", args.registry)
local = read_table(local_path)

# ## 5. Compare
# The same rows in the same order, the same columns, every painted value equal to 1e-12.
assert list(remote.columns) == list(local.columns), (list(remote.columns), list(local.columns))
assert len(remote) == len(local)
worst = max(float(np.max(np.abs(remote[c].to_numpy(float) - local[c].to_numpy(float)))) for c in predicted)
print(f"largest difference between the service and local painting: {worst:.3g}")
gp.close()
if not predicted or worst > 1e-12:
    print("MISMATCH", file=sys.stderr)
    sys.exit(1)
print("OK: the service paints exactly as galaxypaint paint does locally")
