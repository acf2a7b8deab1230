#!/usr/bin/env bash
# Build imgflow's image (deploy/image/Dockerfile) from the checkout: `make image`.
#
#   IMAGE   the tag to build                      (default imgflow:latest)
#   BASE    the Python 3.11 base image            (default python:3.11-slim)
#   MIRROR  the Debian mirror for a local base    (default: this machine's apt source)
#
# The build runs with no network: the host fills a wheelhouse (.image/context/wheels) from
# requirements.lock with its own pip, which also builds the wheels of packages that ship only sources.
# Where BASE can neither be found nor pulled (no registry), a minimal Debian bookworm with Python 3.11 is
# made with debootstrap (as root) and imported as imgflow-base:bookworm, once, and used as BASE instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${IMAGE:-imgflow:latest}
BASE=${BASE:-python:3.11-slim}
PYTHON=${PYTHON:-.venv/bin/python}
CONTEXT=.image/context
LOCAL_BASE=imgflow-base:bookworm
started=$(date +%s)

# Run a command with its output kept back, shown only when it fails.
quiet() {
  local log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" | tail -40 >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

if ! docker info >/dev/null 2>&1; then
  echo "make image: no Docker daemon answers (docker info failed). Start one, e.g. as root:" >&2
  echo "  apt-get install -y docker.io && dockerd --iptables=false --bridge=none &" >&2
  exit 1
fi

if ! docker image inspect "$BASE" >/dev/null 2>&1 && ! docker pull --quiet "$BASE" >/dev/null 2>&1; then
  echo "make image: cannot pull $BASE; using a local Debian bookworm base, $LOCAL_BASE"
  if ! docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { echo "make image: needs debootstrap for the local base (apt-get install -y debootstrap)" >&2; exit 1; }
    MIRROR=${MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)}
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    echo "make image: debootstrap bookworm from $MIRROR (about a minute)"
    quiet debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$MIRROR"
    tar -C "$root" -c . | docker import --message "debootstrap --variant=minbase bookworm + python3" - "$LOCAL_BASE" >/dev/null
    rm -rf "$root"
  fi
  BASE=$LOCAL_BASE
fi

echo "make image: wheelhouse from requirements.lock"
rm -rf "$CONTEXT"  # a fresh wheelhouse each time: a wheel left from an older lock would be installed too
mkdir -p "$CONTEXT/wheels" "$CONTEXT/dist"
quiet "$PYTHON" -m pip wheel --no-deps --no-build-isolation -w "$CONTEXT/dist" .
quiet "$PYTHON" -m pip wheel -w "$CONTEXT/wheels" -c requirements.lock "$CONTEXT"/dist/imgflow-*.whl
rm -f "$CONTEXT"/wheels/imgflow-*.whl  # the wheelhouse holds the dependencies; dist/ holds imgflow
# The host resolved the wheelhouse with its own Python; the base's may need more (a dependency behind a
# marker such as python_full_version < "3.11.3"). Ask the base's pip, offline, and add what it lacks.
for _ in 1 2 3 4 5 6 7 8; do
  answer=$(docker run --rm --network none -v "$PWD/$CONTEXT/wheels:/wheels:ro" -v "$PWD/$CONTEXT/dist:/dist:ro" "$BASE" sh -c \
    'python3 -m venv /tmp/venv && /tmp/venv/bin/python -m pip install --dry-run --quiet --no-index --find-links /wheels /dist/*.whl' 2>&1) \
    && break
  wanted=$(printf '%s\n' "$answer" | sed -n 's/.*No matching distribution found for \([^;]*\).*/\1/p' | head -1 | tr -d ' ')
  [ -n "$wanted" ] || { printf '%s\n' "$answer" >&2; echo "make image: the base $BASE cannot install the wheelhouse (above)" >&2; exit 1; }
  echo "make image: the base's Python also needs $wanted"
  quiet "$PYTHON" -m pip wheel -w "$CONTEXT/wheels" -c requirements.lock "$wanted"
done
cp -r datasets "$CONTEXT/datasets"
cp deploy/image/entrypoint.sh "$CONTEXT/"
version=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("imgflow"))')

echo "make image: docker build $IMAGE from $BASE (no network)"
quiet docker build --network none --build-arg "BASE=$BASE" --build-arg "VERSION=$version" \
  -f deploy/image/Dockerfile -t "$IMAGE" "$CONTEXT"
size=$(docker image inspect "$IMAGE" --format '{{.Size}}')
echo "make image: built $IMAGE ($((size / 1000000)) MB) in $(( $(date +%s) - started )) s"
