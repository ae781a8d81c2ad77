"""Faults for remote tasks (Ray pickles this module by value, so its workers need not import tests/).

``kill_once_plan``: a static sweep plan that kills its own worker process (SIGKILL) the first time it
profiles the victim variant, as a lost node or an OOM killer would; a marker file makes the retry
run normally.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from bench.sweep import StaticPlan


class KillOncePlan(StaticPlan):
    def __init__(self, marker: str, victim: str) -> None:
        self.marker = marker
        self.victim = victim

    def rows(self, spec, device, done, store, emit=None):
        if spec.name == self.victim and not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().rows(spec, device, done, store)


def kill_once_factory(marker: str, victim: str):
    return lambda: KillOncePlan(marker, victim)
