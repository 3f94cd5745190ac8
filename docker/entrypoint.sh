#!/bin/sh
# The container's entrypoint, also run outside Docker by the tests (tests/test_docker_scripts.py).
#   entrypoint.sh serve        (default) galaxypaint serve on $GALAXYPAINT_HOST:$GALAXYPAINT_PORT
#   entrypoint.sh train        populate $GALAXYPAINT_REGISTRY from the built-in catalog (needs the train extra)
#   entrypoint.sh healthcheck  exit 0 when /health/ready answers 200
#   entrypoint.sh <anything>   run that galaxypaint subcommand
set -eu
: "${GALAXYPAINT_REGISTRY:=/srv/galaxypaint/models}"
: "${GALAXYPAINT_DATA_DIR:=/srv/galaxypaint/data}"
: "${GALAXYPAINT_HOST:=0.0.0.0}"
: "${GALAXYPAINT_PORT:=8000}"
: "${GALAXYPAINT_WORKERS:=1}"
: "${GALAXYPAINT_PRESET:=fast}"
export GALAXYPAINT_REGISTRY GALAXYPAINT_DATA_DIR
GALAXYPAINT="${GALAXYPAINT_BIN:-galaxypaint}"

cmd="${1:-serve}"
[ $# -gt 0 ] && shift
case "$cmd" in
  serve)
    exec "$GALAXYPAINT" serve --host "$GALAXYPAINT_HOST" --port "$GALAXYPAINT_PORT" \
      --workers "$GALAXYPAINT_WORKERS" --registry "$GALAXYPAINT_REGISTRY" --data-dir "$GALAXYPAINT_DATA_DIR" "$@"
    ;;
  train)
    mkdir -p "$GALAXYPAINT_DATA_DIR"
    demo="$GALAXYPAINT_DATA_DIR/demo.parquet"
    [ -f "$demo" ] || "$GALAXYPAINT" demo-data --out "$demo"
    exec "$GALAXYPAINT" train --data "$demo" --registry "$GALAXYPAINT_REGISTRY" --preset "$GALAXYPAINT_PRESET" "$@"
    ;;
  healthcheck)
    exec python3 -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:${GALAXYPAINT_PORT}/health/ready', timeout=5).status == 200 else 1)"
    ;;
  *)
    exec "$GALAXYPAINT" "$cmd" "$@"
    ;;
esac
