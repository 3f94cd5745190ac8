#!/usr/bin/env bash
# Builds the Dockerfile's runtime image without a Docker engine and checks that it serves.
#
#   bash docker/test-image.sh          (run by .ci/run after the tests)
#
# buildah (chroot isolation, no daemon) builds the Dockerfile on a Debian bookworm base made by
# debootstrap and stored under the name the Dockerfile pulls (python:3.11-slim), so nothing is pulled
# from a container registry: pip inside the build reaches the package index the way this machine's pip
# does (its configuration, certificates and the local files it names are mounted into the build).
# The built image then serves a registry trained here, as uid 10001, and docker/check_image.py checks
# its health check, one prediction and one paint job through the mounted data directory against
# the same commands run outside the image.  The image size is reported.
#
# Skips with one line only where it cannot run at all: not root, or buildah/debootstrap absent and no
# apt-get to install them.  Environment: GALAXYPAINT_IMAGE_WORK (where its scratch directory is made,
# default /tmp; the scratch directory is removed at the end), PYTHON (the interpreter with galaxypaint
# installed, default .venv/bin/python), GALAXYPAINT_IMAGE_KEEP=1 keeps the scratch directory and the
# image store for a look afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
SUITE=bookworm  # Debian's python3 is 3.11 there, the version the Dockerfile's ARG PYTHON names
PY_TAG=3.11
say() { printf '[image] %s\n' "$*"; }
elapsed() { echo "$(( $(date +%s) - $1 )) s"; }

if [ "$(id -u)" != 0 ]; then  # debootstrap, chroot builds and the data directory's owner need root
  echo "docker/test-image.sh: skipped: building and serving the image needs root (buildah, debootstrap)"
  exit 0
fi
need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    say "installing ${need[*]} (apt-get)"
    apt-get update -qq >/dev/null || { echo "docker/test-image.sh: apt-get update failed" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
      || { echo "docker/test-image.sh: apt-get install ${need[*]} failed" >&2; exit 1; }
  else
    echo "docker/test-image.sh: skipped: ${need[*]} not installed and not installable here (no apt-get)"
    exit 0
  fi
fi
grep -q "^ARG PYTHON=${PY_TAG}\$" Dockerfile \
  || { echo "docker/test-image.sh: the Dockerfile's ARG PYTHON is not ${PY_TAG}, the python3 of Debian ${SUITE}" >&2; exit 1; }

# a directory of our own, even inside a given one: the cleanup removes it whole
mkdir -p "${GALAXYPAINT_IMAGE_WORK:-/tmp}"
WORK=$(mktemp -d "${GALAXYPAINT_IMAGE_WORK:-/tmp}/galaxypaint-image.XXXXXX")
# an image store of our own: the machine's containers (if any) are never touched
BUILDAH=(buildah --root "$WORK/storage" --runroot "$WORK/run")
SERVER_PID=""
cleanup() {
  local rc=$?  # the script's status: the checks', not the stopped server's
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [ "${GALAXYPAINT_IMAGE_KEEP:-0}" != 1 ]; then
    "${BUILDAH[@]}" umount --all >/dev/null 2>&1 || true
    "${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
    "${BUILDAH[@]}" rmi --all --force >/dev/null 2>&1 || true
    # overlay mounts left by an interrupted run would make rm -rf fail
    grep -o "$WORK/[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r umount -l 2>/dev/null || true
    rm -rf "$WORK"
  else
    say "kept $WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT

# 1. The base image: Debian minbase with python3, under the name the Dockerfile pulls.
t=$(date +%s)
mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
         | sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p; s/^deb \(http[^ ]*debian\) .*/\1/p' | head -1 || true)
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$WORK/rootfs" \
  "${mirror:-http://deb.debian.org/debian}" >"$WORK/debootstrap.log" 2>&1 \
  || { tail -20 "$WORK/debootstrap.log" >&2; echo "docker/test-image.sh: debootstrap failed" >&2; exit 1; }
ln -sf python3 "$WORK/rootfs/usr/bin/python"  # python:*-slim images answer to `python`
rm -rf "$WORK/rootfs/var/lib/apt/lists/"* "$WORK/rootfs/var/cache/apt/"*.bin
tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" . && rm -rf "$WORK/rootfs"
ctr=$("${BUILDAH[@]}" from scratch)
"${BUILDAH[@]}" add "$ctr" "$WORK/rootfs.tar" / >/dev/null
"${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd python3 "$ctr"
"${BUILDAH[@]}" commit --rm -q "$ctr" "python:${PY_TAG}-slim" >/dev/null
rm -f "$WORK/rootfs.tar"
say "base python:${PY_TAG}-slim from debootstrap ($SUITE): $(elapsed "$t")"

# 2. pip inside the build as pip outside it: the effective configuration (files and PIP_* variables)
# written to one file, mounted with the certificates and every local path it names.
mounts=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
"$PYTHON" docker/pip_mounts.py "$WORK/pip.conf" >"$WORK/pip-mounts"
mounts+=(-v "$WORK/pip.conf:/etc/pip.conf:ro")
while IFS= read -r path; do mounts+=(-v "$path:$path:ro"); done <"$WORK/pip-mounts"
say "pip configuration mounted into the build: $(wc -l <"$WORK/pip-mounts") local paths"

# 3. The runtime image, as a user's `docker build .` would make it.
t=$(date +%s)
"${BUILDAH[@]}" bud --isolation chroot --pull=never --target runtime "${mounts[@]}" \
  -t galaxypaint:test -f Dockerfile . >"$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log" >&2; echo "docker/test-image.sh: the image build failed" >&2; exit 1; }
size=$("${BUILDAH[@]}" images --format '{{.Size}}' galaxypaint:test)
say "built galaxypaint:test (runtime target): $(elapsed "$t"), image size $size"

# 4. A registry to serve, trained outside the image, and a data directory owned by the image's user.
t=$(date +%s)
mkdir -p "$WORK/models" "$WORK/data"
"$PYTHON" -m app.cli demo-data --n 20000 --seed 7 --out "$WORK/data/halos.parquet" >/dev/null
"$PYTHON" -m app.cli train --data "$WORK/data/halos.parquet" --registry "$WORK/models" --preset fast \
  --models lgbm,knn --no-sampler --no-report >"$WORK/train.log" 2>&1 \
  || { tail -20 "$WORK/train.log" >&2; echo "docker/test-image.sh: training the test registry failed" >&2; exit 1; }
chown -R 10001 "$WORK/models" "$WORK/data"
say "test registry trained: $(elapsed "$t")"

# 5. Serve it from the image (the entrypoint's default command, the image's user) and check it.
port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ctr=$("${BUILDAH[@]}" from --pull=never galaxypaint:test)
# buildah run mounts the image's own VOLUMEs over -v mounts of the same path in no fixed order (docker
# and podman let -v win): the working container forgets them, the image keeps them
"${BUILDAH[@]}" config --volume /srv/galaxypaint/models- --volume /srv/galaxypaint/data- "$ctr"
run=("${BUILDAH[@]}" run --isolation chroot --network host -v "$WORK/models:/srv/galaxypaint/models"
     -v "$WORK/data:/srv/galaxypaint/data" -e "GALAXYPAINT_PORT=$port" -e GALAXYPAINT_HOST=127.0.0.1 "$ctr" --)
"${run[@]}" galaxypaint-entrypoint serve >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
"$PYTHON" docker/check_image.py --url "http://127.0.0.1:$port" --registry "$WORK/models" --data-dir "$WORK/data" \
  --catalog halos.parquet --image-size "$size" --healthcheck "${run[*]} galaxypaint-entrypoint healthcheck" \
  --whoami "${run[*]} id -u" --server-log "$WORK/serve.log" --server-pid "$SERVER_PID"
