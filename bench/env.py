"""The environment a run was measured in (``DIR/env.json``)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = "env.json"


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> dict[str, Any]:
    if not (PROJECT_ROOT / ".git").exists() or shutil.which("git") is None:
        return {"commit": None, "dirty": None}
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _gpu() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None, "gpu_count": 0, "driver": None}
    driver = None
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.split()
            driver = out[0] if out else None
        except (OSError, subprocess.SubprocessError):
            driver = None
    return {"gpu": torch.cuda.get_device_name(0), "gpu_count": torch.cuda.device_count(), "driver": driver}


def collect_env(
    grid_source: str | None = None, grid_sha256: str | None = None, command: str | None = None
) -> dict[str, Any]:
    """Host, CPU, GPU, library versions, git commit, grid hash, command line and start time."""
    import torch

    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **_gpu(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "optuna": _version("optuna"),
        "fvcore": _version("fvcore"),
        "pandas": _version("pandas"),
        "nectargan_bench": _version("nectargan-bench"),
        "git": _git_commit(),
        "grid": grid_source,
        "grid_sha256": grid_sha256,
        "command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and a rename: never a half-written file."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_env(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / ENV_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
