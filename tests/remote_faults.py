"""Faults for remote tasks (Ray pickles this module by value, so its workers need not import tests/).

``hold_on_node_factory``: a static sweep plan whose task, on the named node, writes a marker and waits there
(up to a limit) for the test to kill that node: a task in flight on a node that is lost.
"""

from __future__ import annotations

from pathlib import Path

from bench.sweep import StaticPlan


class HoldOnNodePlan(StaticPlan):
    """Static rows, but a task on node ``node`` (its hostname) first writes ``marker`` (the variant it
    holds) and waits, up to ``limit_s``, for its node to be lost: the test kills the node meanwhile."""

    def __init__(self, marker: str, node: str, limit_s: float) -> None:
        self.marker = marker
        self.node = node
        self.limit_s = limit_s

    def rows(self, spec, device, done, store, emit=None):
        import socket
        import time

        if socket.gethostname() == self.node:
            Path(self.marker).write_text(spec.name)
            deadline = time.monotonic() + self.limit_s
            while time.monotonic() < deadline:  # held here until the node is killed
                time.sleep(0.2)
        return super().rows(spec, device, done, store)


def hold_on_node_factory(marker: str, node: str, limit_s: float = 120.0):
    return lambda: HoldOnNodePlan(marker, node, limit_s)
