"""A measuring child with injected faults, for tests (production code has no fault hooks).

Run as ``python tests/faults.py PLAN_JSON`` in place of ``python -m bench.child`` (the
``fault_child`` fixture points :data:`bench.launcher.CHILD_COMMAND` here). PLAN_JSON maps a fault to
a substring of the variant names it hits: ``{"oom": "ResidualUnetBlock", "crash": "-f4-",
"hang": "-f6-"}``; ``{"oom_above_batch": 5}`` makes every batch above 5 run out of memory.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    plan = json.loads(sys.argv[1])
    import torch

    from bench import child, workload

    build = workload.build_workload

    def faulty_build(spec, cfg, device, seed):
        for fault in ("crash", "hang", "oom"):
            if fault in plan and plan[fault] in spec.name:
                if fault == "crash":
                    os._exit(3)
                if fault == "hang":
                    while True:
                        time.sleep(3600)
                raise torch.OutOfMemoryError(f"injected out-of-memory for {spec.name} (test fault)")
        if "oom_above_batch" in plan and cfg.batch_size > plan["oom_above_batch"]:
            raise torch.OutOfMemoryError(f"injected out-of-memory above batch {plan['oom_above_batch']} (test fault)")
        return build(spec, cfg, device, seed)

    workload.build_workload = faulty_build
    return child.main()


if __name__ == "__main__":
    sys.exit(main())
