#!/usr/bin/env bash
# The prepared GPU check, for a bare GPU host with no package index. From the repository root:
#   bash scripts/gpu-check.sh [OUT_DIR] [--part 1|2]      (default results/gpu-check-<timestamp>, part 1)
#
# Installs the wheels in .whl/ into /tmp/site when optuna, fvcore, sqlalchemy or pytest cannot be imported
# (fetch them beforehand, where there is an index, with
# `bash ../shared/tools/gpu-host-wheels.sh portalocker pytest pluggy iniconfig typing_extensions`), then
# runs scripts/gpu_check.py: phases ordered by value, each under its own cap, rows on disk as they are
# measured, OUT/summary.json rewritten after each phase (see that file's docstring for the phases).
# Needs no network and no install of the project (PYTHONPATH=$PWD).
#
# Environment: PYTHON (default python3); GPU_CHECK_BUDGET_S (seconds for the whole part, default 480);
# GPU_CHECK_DEVICE=cpu rehearses the part on a CPU at tiny sizes; GPU_CHECK_SITE (default /tmp/site);
# TORCHINDUCTOR_CACHE_DIR (default results/gpu-check-inductor-cache: one cache for every phase).
# Exit status: 0 when every phase is done, 1 otherwise (summary.txt says which).
set -uo pipefail
export GPU_CHECK_STARTED=${GPU_CHECK_STARTED:-$(date +%s.%N)}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
PY=${PYTHON:-python3}
export PYTHON=$PY
SITE=${GPU_CHECK_SITE:-/tmp/site}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

missing=$("$PY" - <<'PYEOF' 2>/dev/null || echo "python"
import importlib.util
mods = ("optuna", "fvcore", "iopath", "portalocker", "sqlalchemy", "alembic", "pytest")
print(" ".join(m for m in mods if importlib.util.find_spec(m) is None))
PYEOF
)
if [ -n "$missing" ]; then
    shopt -s nullglob
    wheels=()
    for w in .whl/*.whl; do
        case ${w##*/} in  # keep the host's own pytest when it has one
            pytest-*|pluggy-*|iniconfig-*) [[ " $missing " == *" pytest "* ]] || continue ;;
        esac
        wheels+=("$w")
    done
    shopt -u nullglob
    if [ ${#wheels[@]} -eq 0 ]; then
        echo "Error: cannot import: $missing, and .whl/ holds no wheels (fetch them with: bash ../shared/tools/gpu-host-wheels.sh portalocker pytest pluggy iniconfig typing_extensions)" >&2
        exit 1
    fi
    echo "[gpu-check] installing ${#wheels[@]} wheels from .whl/ into $SITE (missing: $missing)" >&2
    timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${wheels[@]}" >&2 || { echo "Error: pip install of .whl/ failed" >&2; exit 1; }
    export PYTHONPATH="$SITE:$PYTHONPATH"
fi
exec "$PY" "$ROOT/scripts/gpu_check.py" "$@"
