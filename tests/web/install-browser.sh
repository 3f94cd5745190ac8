#!/usr/bin/env bash
# What the browser tests (tests/web/test_browser.py) need beyond the dev extra, installed by .ci/run:
#   - Chromium and its WebDriver, Debian's `chromium` and `chromium-driver` (apt-get, as root);
#   - axe-core, the accessibility engine, a test-only copy from the npm registry (a pinned release, its
#     sha256 checked) unpacked into the cache directory where the test looks for it.
# Where either cannot be installed it says so in one line and the tests concerned skip with their reason.
set -uo pipefail
AXE_VERSION=4.14.1
AXE_SHA256=e6b0ce02b84d892e2e33e403485e7f3d6c29e2be6df65daf44d89ba564139745
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/galaxypaint/axe-core-$AXE_VERSION"

if ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    t=$(date +%s)
    if apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver >/dev/null 2>&1; then
      echo "[browser] chromium $(chromium --version 2>/dev/null | awk '{print $2}') installed in $(( $(date +%s) - t )) s"
    else
      echo "[browser] chromium could not be installed (apt-get failed): the browser tests will skip"
    fi
  else
    echo "[browser] chromium not installed and not installable here (needs root and apt-get): the browser tests will skip"
  fi
fi

if [ ! -f "$CACHE/axe.min.js" ]; then
  python3 - "$AXE_VERSION" "$AXE_SHA256" "$CACHE" <<'EOF' || echo "[browser] axe-core not fetched: the accessibility test will skip"
import hashlib, io, os, sys, tarfile, urllib.request
version, sha256, cache = sys.argv[1:]
url = f"https://registry.npmjs.org/axe-core/-/axe-core-{version}.tgz"
data = urllib.request.urlopen(url, timeout=60).read()
if hashlib.sha256(data).hexdigest() != sha256:
    sys.exit(f"[browser] {url}: sha256 differs from the pinned one")
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    js = tar.extractfile("package/axe.min.js").read()
os.makedirs(cache, exist_ok=True)
with open(os.path.join(cache, "axe.min.js.tmp"), "wb") as fh:
    fh.write(js)
os.replace(os.path.join(cache, "axe.min.js.tmp"), os.path.join(cache, "axe.min.js"))
print(f"[browser] axe-core {version} in {cache}")
EOF
fi
exit 0
