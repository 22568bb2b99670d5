#!/usr/bin/env bash
# One-time set-up: the Fashion-MNIST Debian package (when apt is there), a virtual environment in
# .venv, and prunelab with its test and backend extras.  torch is pinned through constraints.txt
# (the local CPU wheel), never through the package's own dependency range.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "installing the Fashion-MNIST Debian package (dataset-fashion-mnist)..." >&2
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

# headless Chromium: the report test opens report.html in it (skipped when there is none)
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
    && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "installing chromium (headless, for the report test)..." >&2
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null || \
    echo "chromium could not be installed; the report rendering test will be skipped" >&2
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# pip's chatter (build-backend notices, local index warnings) goes to a log shown only on failure.
# test-models: torchvision and timm for the real-architecture suite (tests/real_models.py says
# how their model definitions import beside the CPU torch); constraints.txt keeps torch pinned.
if ! .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,onnx,openvino,images,xai,search,report,ray,test-models]" \
    > .venv/pip-install.log 2>&1; then
  tail -n 30 .venv/pip-install.log >&2
  echo "set-up failed: pip could not install prunelab (full log: .venv/pip-install.log)" >&2
  exit 1
fi
.venv/bin/python -c "import prunelab, torch; print(f'prunelab {prunelab.__version__} ready (torch {torch.__version__})')"
