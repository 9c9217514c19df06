#!/usr/bin/env bash
# Install fedhello and its test tools into ./.venv (idempotent).
# torch is pinned and installed first: a bare `torch` requirement would pull the
# CUDA build (gigabytes); the pinned version takes the CPU build where one is offered.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
