"""Cached pipeline stages: each stage's JSON result is written once and read back on a re-run.

A stage is finished when its JSON file exists; the file is written to a temporary name and
renamed, so a process killed mid-stage leaves no half-written result and the stage simply runs
again. The experiment (one stage per cell) and the real-model loop (one per step) both run their
stages through :class:`Stages`, which is what makes them resumable.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from headwater.engine import atomic

LOG = logging.getLogger(__name__)


def write_json_atomic(path: Path, value: Any, *, indent: int | None = 1) -> Path:
    """Write ``value`` as JSON to ``path`` atomically (NaN becomes null); see :mod:`headwater.engine.atomic`."""
    return atomic.write_json(path, value, indent=indent)


class Stages:
    """Runs named stages, each computing a JSON-ready dict, at most once per output file.

    Attributes:
        status: what happened to each stage in this process, ``"ran"`` or ``"cached"``.
    """

    def __init__(self) -> None:
        self.status: dict[str, str] = {}

    def run(self, name: str, path: Path, compute: Callable[[], dict[str, Any]], *, timed: bool = True,
            indent: int | None = 1) -> dict[str, Any]:
        """The dict at ``path``, or ``compute()`` written there (with ``"seconds"`` when ``timed``)."""
        if path.exists():
            self.status.setdefault(name, "cached")
            LOG.info("[%s] finished earlier (%s)", name, path)
            return json.loads(path.read_text())
        LOG.info("[%s] running", name)
        start = time.perf_counter()
        value = compute()
        if timed:
            value["seconds"] = round(time.perf_counter() - start, 1)
        write_json_atomic(path, value, indent=indent)
        self.status.setdefault(name, "ran")
        return value


__all__ = ["Stages", "write_json_atomic"]
