"""The GPU check's record of the host: Python, platform, packages, torch's CUDA and each visible GPU."""

import importlib.metadata as md
import os
import platform
import subprocess
import sys

print("python", sys.version.split()[0], sys.executable)
print("platform", platform.platform(), "cpus", os.cpu_count())
for name in ("CUDA_VISIBLE_DEVICES", "TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_COMPILE_THREADS", "PYTHONPATH"):
    print(name, os.environ.get(name))
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
except (OSError, subprocess.TimeoutExpired):
    commit = ""
print("git", commit or "(no git)")
for package in ("torch", "triton", "numpy", "pandas", "optuna", "fvcore", "sqlalchemy", "alembic", "pytest",
                "typer", "rich", "matplotlib", "torchmetrics", "scikit-image", "nvidia-ml-py"):
    try:
        print(package, md.version(package))
    except md.PackageNotFoundError:
        print(package, "(missing)")
import torch  # noqa: E402 - after the package list, which must print even when torch cannot import

print("torch.version.cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}", p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}", p.multi_processor_count,
          "SMs")
