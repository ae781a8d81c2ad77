"""The measuring child process: ``python -m bench.child`` reads a JSON job on stdin and prints one
envelope line ``NECTARGAN-ENVELOPE {...}`` on stdout: ``status`` (ok / oom / error), ``rows`` and
``error``. The parent (:mod:`bench.launcher`) adds ``timeout`` and ``crash`` when it gets no envelope.

Test-only fault hooks (environment): ``NECTARGAN_BENCH_TEST_FAULT=oom:SUBSTR`` raises
torch.OutOfMemoryError, ``hang:SUBSTR`` sleeps forever and ``crash:SUBSTR`` exits abruptly, for
variants whose name contains SUBSTR; several entries are separated by commas.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

ENVELOPE_PREFIX = "NECTARGAN-ENVELOPE "
FAULT_ENV = "NECTARGAN_BENCH_TEST_FAULT"


def _fault(variant: str) -> None:
    """Apply the first ``KIND:SUBSTR`` entry (comma-separated) whose SUBSTR is in the variant name."""
    entries = [e.split(":", 1) for e in os.environ.get(FAULT_ENV, "").split(",") if ":" in e]
    kind = next((k for k, needle in entries if needle in variant), None)
    if kind is None:
        return
    if kind == "oom":
        import torch

        raise torch.OutOfMemoryError(f"injected out-of-memory for {variant} (test hook)")
    if kind == "hang":
        while True:
            time.sleep(3600)
    if kind == "crash":
        os._exit(3)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Measure one variant's configs, grouped by (task, precision, layout, batch size)."""
    import torch

    from bench.variant import VariantSpec
    from bench.workload import MeasureConfig, matmul_ceiling, measure_group

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    device = torch.device(job["device"])
    if job.get("ceilings_only"):
        return {"status": "ok", "rows": [], "ceilings": {p: matmul_ceiling(device, p) for p in job["precisions"]}}
    spec = VariantSpec(**job["variant"])
    _fault(spec.name)
    configs = [MeasureConfig(**c) for c in job["configs"]]
    groups: dict[tuple, list[MeasureConfig]] = {}
    for cfg in configs:
        groups.setdefault((cfg.task, cfg.precision, cfg.layout, cfg.batch_size), []).append(cfg)
    rows = []
    try:
        for group in groups.values():
            rows += measure_group(spec, group, device, job["flops"], job.get("ceilings", {}), job["blocks"],
                                  job["min_block_s"], compile_only=job.get("compile_only", False))
    except torch.OutOfMemoryError as exc:
        return {"status": "oom", "rows": rows, "error": " ".join(str(exc).split())[:300]}
    envelope = {"status": "ok", "rows": rows, "threads": torch.get_num_threads()}
    if job.get("max_batch"):
        from bench.workload import max_batch

        largest = {}
        for cfg in configs:
            probe = (cfg.task, cfg.precision, cfg.layout)
            if probe not in largest:
                largest[probe] = max_batch(spec, cfg, device, int(job["max_batch"]))
        for row in rows:
            row["max_batch"] = largest[(row["task"], row["precision"], row["layout"])]
    return envelope


def main() -> int:
    job = json.loads(sys.stdin.read())
    try:
        envelope = run_job(job)
    except Exception as exc:  # every failure becomes an envelope the parent can record
        name = type(exc).__name__
        status = "oom" if name == "OutOfMemoryError" else "error"
        envelope = {"status": status, "rows": [], "error": f"{name}: {' '.join(str(exc).split())[:300]}",
                    "traceback": traceback.format_exc()[-2000:]}
    sys.stdout.write(ENVELOPE_PREFIX + json.dumps(envelope) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
