#!/usr/bin/env bash
# Installs everything the test suite needs into the active Python environment, on a fresh
# Debian/Ubuntu machine: Debian's Chromium (browser tests), CPU-capable torch, samkit with its
# test extra, and the official oracle packages that cannot go in the extra (sam2 builds from
# source against the installed torch). Used by the README's test command and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

PY=${PYTHON:-python3}
"$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$PY" -m pip install -q -e ".[test]"
# Official SAM 2 (test oracle only): an sdist that compiles against the torch installed above.
"$PY" -m pip show sam2 >/dev/null 2>&1 || SAM2_BUILD_CUDA=0 "$PY" -m pip install -q --no-build-isolation sam2==1.1.0
# Label Studio, for the test that runs the ML backend against a real one: in its own environment
# (.venv-labelstudio), because its pinned dependencies conflict with the test environment's.
[ -x .venv-labelstudio/bin/label-studio ] || { "$PY" -m venv .venv-labelstudio && .venv-labelstudio/bin/python -m pip install -q label-studio==1.23.2; }
