#!/usr/bin/env bash
# Set-up-free entry point for a fresh machine: `bash run.sh app` or `bash run.sh test`.
# Creates .venv on first use (pinned CPU torch first, so that nothing pulls CUDA wheels),
# installs requirements, then runs the app or the test suite.
set -euo pipefail
cd "$(dirname "$0")"
cmd="${1:-app}"; shift || true
PY="${PYTHON:-python3}"
VENV=.venv
stamp="$VENV/.installed-$(cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)"

if [ ! -f "$stamp" ]; then
  echo "[run.sh] creating $VENV and installing requirements (first run only)..."
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"  # the local CPU wheel; the Space's pin is in requirements.txt
  grep -v '^torch==' requirements.txt > "$VENV/requirements-no-torch.txt"
  "$VENV/bin/python" -m pip install -q -r "$VENV/requirements-no-torch.txt" -r requirements-dev.txt
  touch "$stamp"
fi

case "$cmd" in
  app)
    exec "$VENV/bin/python" app.py "$@"
    ;;
  test)
    if [ ! -x /usr/bin/chromium ]; then
      echo "[run.sh] installing Debian's chromium for the browser test..."
      if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
      $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
    fi
    exec "$VENV/bin/python" -m pytest -q "$@"
    ;;
  *)
    echo "usage: bash run.sh [app|test] [args...]" >&2
    exit 2
    ;;
esac
