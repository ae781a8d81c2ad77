"""A measuring child with injected faults, for tests (production code has no fault hooks).

Run as ``python tests/faults.py PLAN_JSON`` in place of ``python -m bench.child`` (the
``fault_child`` fixture points :data:`bench.launcher.CHILD_COMMAND` here), or forked by the fork server
through :func:`serve_forked` (:data:`bench.launcher.FORKED_CHILD_MAIN`). PLAN_JSON maps a fault to
where it strikes: a substring of the variant name, or a table ``{"name": SUBSTR, FIELD: VALUE, ...}``
that also matches the configuration's fields (task, mode, precision, layout). Faults:

* ``crash``: the process exits at once (exit code 3) when such a workload is built;
* ``abort``: the process dies of SIGABRT with a glibc-like message on stderr, when built;
* ``hang``: it sleeps forever when built (a hang in the long ``build`` phase);
* ``hang_in_blocks``: the built workload hangs on its 8th call (warm-up is over: calibration or a
  timed block, the short phases);
* ``oom``: ``torch.OutOfMemoryError`` when built;
* ``oom_above_batch``: an integer; every batch above it runs out of memory.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def _matches(where, spec, cfg) -> bool:
    if isinstance(where, str):
        return where in spec.name
    return where.get("name", "") in spec.name and all(
        getattr(cfg, key) == value for key, value in where.items() if key != "name"
    )


def _hang() -> None:
    while True:
        time.sleep(3600)


def apply(plan: dict) -> None:
    """Make this process's ``bench.workload.build_workload`` strike as ``plan`` says."""
    import torch

    from bench import workload

    build = workload.build_workload

    def faulty_build(spec, cfg, device, seed):
        hit = {fault for fault, where in plan.items() if fault != "oom_above_batch" and _matches(where, spec, cfg)}
        if "crash" in hit:
            os._exit(3)
        if "abort" in hit:
            sys.stderr.write("double free or corruption (out)\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGABRT)
        if "hang" in hit:
            _hang()
        if "oom" in hit:
            raise torch.OutOfMemoryError(f"injected out-of-memory for {spec.name} (test fault)")
        if "oom_above_batch" in plan and cfg.batch_size > plan["oom_above_batch"]:
            raise torch.OutOfMemoryError(f"injected out-of-memory above batch {plan['oom_above_batch']} (test fault)")
        built = build(spec, cfg, device, seed)
        if "hang_in_blocks" in hit:
            calls = [0]
            inner = built.call

            def call():
                calls[0] += 1
                if calls[0] >= 8:
                    _hang()
                return inner()

            built.call = call
        return built

    workload.build_workload = faulty_build


def main() -> int:
    from bench import child

    apply(json.loads(sys.argv[1]))
    return child.main()


def serve_forked(plan_json: str, *args) -> None:
    """The forked child's life with faults (``functools.partial(serve_forked, PLAN_JSON)`` is what the
    ``fault_child`` fixture puts in :data:`bench.launcher.FORKED_CHILD_MAIN`)."""
    from bench import child

    apply(json.loads(plan_json))
    child.serve_forked(*args)


if __name__ == "__main__":
    sys.exit(main())
