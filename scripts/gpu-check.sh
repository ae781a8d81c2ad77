#!/usr/bin/env bash
# The prepared GPU check, for a bare GPU host with no package index. From the repository root:
#   bash scripts/gpu-check.sh [OUT_DIR]            (default results/gpu-check-<timestamp>)
#
# 1. installs the wheels in .whl/ into /tmp/site when optuna, fvcore, sqlalchemy or pytest cannot be
#    imported (fetch them beforehand, where there is an index, with
#    `bash ../shared/tools/gpu-host-wheels.sh portalocker pytest pluggy iniconfig typing_extensions`;
#    the host's own pytest is kept when it has one);
# 2. records nvidia-smi, Python, torch, CUDA and package versions into OUT;
# 3. runs the CUDA tests: python3 -m pytest -m cuda tests/test_cuda.py (OUT/pytest-cuda.log);
# 4. runs the GPU reference sweeps bench/grids/reference-gpu.toml, reference-gpu-layouts.toml and
#    reference-gpu-gan.toml (the whole GAN step against NectarGAN's loop) into OUT/<grid> (log
#    OUT/reference.log) and merges them into OUT/reference (report.md, measurements.csv, plots);
# then prints OUT and a one-line summary (also OUT/summary.txt). Each phase runs under `timeout` so the
# whole check ends within 8 minutes; the exit status is 1 when the tests or a sweep failed.
# Needs no network and no install of the project (PYTHONPATH=$PWD).
#
# Environment: PYTHON (default python3); GPU_CHECK_BUDGET_S (seconds for everything, default 470);
# GPU_CHECK_SITE (default /tmp/site); GPU_CHECK_SKIP_GPU=1 stops after phase 2 with status 0 when there
# is no GPU (to try the install and recording on any machine).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/results/gpu-check-$(date +%Y%m%d-%H%M%S)}
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
cd "$ROOT" || exit 1
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
SITE=${GPU_CHECK_SITE:-/tmp/site}
SWEEP_RESERVE=200   # seconds kept for the reference sweeps when pytest's limit is set
START=$SECONDS
mkdir -p "$OUT" || exit 1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# A persistent Inductor cache for this host, so a shape compiled again is warm. (Measured sweeps give
# their measuring children the run folder's own cache, DIR/inductor-cache, whatever this says.)
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$ROOT/results/gpu-check-inductor-cache}

say() { printf '[gpu-check %4ds] %s\n' $((SECONDS - START)) "$*" | tee -a "$OUT/gpu-check.log" >&2; }
left() { echo $((BUDGET - (SECONDS - START))); }
clamp() { local v=$1 lo=$2 hi=$3; ((v < lo)) && v=$lo; ((v > hi)) && v=$hi; echo "$v"; }

missing_modules() {
    "$PY" - <<'EOF' 2>/dev/null || echo "python"
import importlib.util
mods = ("optuna", "fvcore", "iopath", "portalocker", "sqlalchemy", "alembic", "pytest")
print(" ".join(m for m in mods if importlib.util.find_spec(m) is None))
EOF
}

# --- 1. wheels -------------------------------------------------------------------------------------------
say "OUT=$OUT python=$(command -v "$PY" || echo "$PY")"
missing=$(missing_modules)
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
        say "Error: cannot import: $missing, and .whl/ holds no wheels (fetch them with: bash ../shared/tools/gpu-host-wheels.sh portalocker pytest pluggy iniconfig typing_extensions)"
        exit 1
    fi
    say "installing ${#wheels[@]} wheels from .whl/ into $SITE (missing: $missing)"
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${wheels[@]}" >"$OUT/pip-install.log" 2>&1 \
        && export PYTHONPATH="$SITE:$PYTHONPATH" \
        || { say "Error: pip install failed (see $OUT/pip-install.log)"; exit 1; }
    still=$(missing_modules)
    [ -z "$still" ] || say "warning: still cannot import: $still"
fi

# --- 2. record -------------------------------------------------------------------------------------------
gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && timeout 30 nvidia-smi -L >/dev/null 2>&1; then
    gpu=1
    { timeout 30 nvidia-smi; timeout 30 nvidia-smi -L
      timeout 30 nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
    } >"$OUT/nvidia-smi.txt" 2>&1
else
    echo "nvidia-smi: not found or no GPU" >"$OUT/nvidia-smi.txt"
fi
timeout 90 "$PY" - >"$OUT/versions.txt" 2>&1 <<'EOF'
import importlib.metadata as md, os, platform, subprocess, sys
print("python", sys.version.split()[0], sys.executable)
print("platform", platform.platform(), "cpus", os.cpu_count())
for name in ("CUDA_VISIBLE_DEVICES", "TORCHINDUCTOR_CACHE_DIR", "PYTHONPATH"):
    print(name, os.environ.get(name))
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
except OSError:
    commit = ""
print("git", commit or "(no git)")
for package in ("torch", "triton", "numpy", "pandas", "optuna", "fvcore", "sqlalchemy", "alembic", "pytest",
                "typer", "rich", "matplotlib", "torchmetrics", "scikit-image", "nvidia-ml-py"):
    try:
        print(package, md.version(package))
    except md.PackageNotFoundError:
        print(package, "(missing)")
import torch
print("torch.version.cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}", p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs")
EOF
say "recorded $OUT/nvidia-smi.txt and $OUT/versions.txt: $(grep -E '^(torch|python) ' "$OUT/versions.txt" | tr '\n' ' ')"

summary() {
    echo "$1" >"$OUT/summary.txt"
    echo "$OUT"
    echo "$1"
}
if [ "$gpu" != 1 ] || ! grep -q '^cuda available True' "$OUT/versions.txt"; then
    if [ "${GPU_CHECK_SKIP_GPU:-0}" = 1 ]; then
        summary "gpu-check: no GPU here (GPU_CHECK_SKIP_GPU=1): installed and recorded only, tests and sweeps skipped, $((SECONDS - START)) s"
        exit 0
    fi
    summary "gpu-check: FAILED: no usable CUDA GPU (see $OUT/nvidia-smi.txt and $OUT/versions.txt)"
    exit 1
fi

# --- 3. the CUDA tests -----------------------------------------------------------------------------------
limit=$(clamp $(($(left) - SWEEP_RESERVE)) 60 330)
say "pytest -m cuda tests/test_cuda.py (limit ${limit} s) -> $OUT/pytest-cuda.log"
timeout -k 10 "$limit" "$PY" -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider \
    --junitxml="$OUT/pytest-cuda.xml" 2>&1 | tee "$OUT/pytest-cuda.log"
pytest_rc=${PIPESTATUS[0]}
pytest_line=$(timeout 15 "$PY" - "$OUT/pytest-cuda.xml" <<'EOF' 2>/dev/null || echo "no test report"
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
print(f"{passed} passed, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped "
      f"in {float(suite.get('time', 0)):.0f} s")
EOF
)
((pytest_rc == 124 || pytest_rc == 137)) && pytest_line="timed out after ${limit} s; $pytest_line"
# On a GPU host nothing may be skipped: a skip means the tests did not see CUDA.
if ((pytest_rc == 0)) && [[ $pytest_line != *" 0 skipped"* || $pytest_line == "0 passed"* ]]; then
    pytest_rc=1
    pytest_line="$pytest_line (CUDA tests skipped or none ran)"
fi
say "pytest exit $pytest_rc: $pytest_line"

# --- 4. the reference sweeps -----------------------------------------------------------------------------
sweep() {  # sweep NAME CAP_S RESERVE_S: at most CAP_S, leaving RESERVE_S of the budget; skipped under 30 s
    local rc limit
    limit=$(($(left) - $3))
    ((limit > $2)) && limit=$2
    if ((limit < 30)); then
        say "sweep $1: skipped, the budget is spent"
        return 124
    fi
    echo "=== $1 (limit $limit s) ===" >>"$OUT/reference.log"
    timeout -k 10 "$limit" "$PY" -m cli sweep "bench/grids/$1.toml" --out "$OUT/$1" --quiet >>"$OUT/reference.log" 2>&1
    rc=$?
    say "sweep $1: exit $rc$( ((rc == 124 || rc == 137)) && echo " (timed out after $limit s)")"
    return $rc
}
sweep reference-gpu 150 230
family_rc=$?
sweep reference-gpu-layouts 330 120
layouts_rc=$?
sweep reference-gpu-gan 200 15
gan_rc=$?
folders=()
for d in "$OUT/reference-gpu" "$OUT/reference-gpu-layouts" "$OUT/reference-gpu-gan"; do
    [ -s "$d/results.jsonl" ] && folders+=("$d")
done
report_rc=1
if [ ${#folders[@]} -gt 0 ]; then
    timeout "$(clamp $(($(left) - 15)) 10 60)" "$PY" -m cli report "${folders[@]}" --out "$OUT/reference" \
        >>"$OUT/reference.log" 2>&1
    report_rc=$?
fi
reference_line=$(timeout 15 "$PY" - "$OUT/reference/results.jsonl" <<'EOF' 2>/dev/null || echo "no merged results"
import collections, json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
measured = [r for r in rows if r.get("kind") == "measure"]
counts = collections.Counter(r["status"] for r in measured)
best = max((r for r in measured if r["status"] == "ok" and r["task"] == "train"), key=lambda r: r["img_per_s"], default=None)
text = f"{len(measured)} measured rows: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
if best:
    text += f"; best train {best['img_per_s']:.0f} img/s ({best['variant']} {best['mode']} {best['layout']})"
gan = [r for r in measured if r["status"] == "ok" and r["task"] == "gan_train"]
ours = max((r for r in gan if r["mode"] != "nectargan"), key=lambda r: r["img_per_s"], default=None)
base1 = next((r for r in gan if r["mode"] == "nectargan" and r["batch_size"] == 1), None)
if ours:
    text += f"; GAN step {ours['img_per_s']:.0f} img/s ({ours['mode']})"
    if base1:
        text += f" = {ours['img_per_s'] / base1['img_per_s']:.1f}x NectarGAN's loop at batch 1"
print(text)
EOF
)

status=OK
((pytest_rc != 0 || family_rc != 0 || layouts_rc != 0 || gan_rc != 0 || report_rc != 0)) && status=FAILED
summary "gpu-check: $status in $((SECONDS - START)) s; pytest (exit $pytest_rc): $pytest_line; reference (exit $family_rc/$layouts_rc/$gan_rc, report $report_rc): $reference_line"
[ "$status" = OK ]
