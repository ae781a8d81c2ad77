#!/usr/bin/env bash
# Create .venv at the repository root (if missing) and install the project into it.
# Idempotent: a second run checks a stamp of pyproject.toml and returns in about a second.
# Without a CUDA GPU it pins the CPU build torch==2.13.0 (no multi-GB CUDA download);
# override with NECTARGAN_TORCH='torch==X.Y.Z' (or any pip requirement).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.nectargan-bench-installed

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "Error: Python >= 3.11 is needed; '$PYTHON' is $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11." >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi

want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] && "$VENV/bin/python" -c 'import torch, nectargan' 2>/dev/null; then
    exit 0
fi

pip_install() { "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@"; }
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    if [ -n "${NECTARGAN_TORCH:-}" ]; then
        torch_req="$NECTARGAN_TORCH"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        torch_req="torch"            # a CUDA machine: the default (CUDA) build
    else
        torch_req="torch==2.13.0"    # no GPU: the CPU build
    fi
    echo "setup: installing $torch_req" >&2
    pip_install "$torch_req"
fi
echo "setup: installing nectargan-bench and its dependencies into $VENV" >&2
pip_install -e ".[dev]"
echo "$want" > "$STAMP"
