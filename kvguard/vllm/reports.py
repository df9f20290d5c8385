"""KVGUARD_REPORT=DIR: each process writes its guard report to DIR at exit and at each
violation (a strict-mode engine core may be killed before it can exit cleanly).

One `kvguard-<host>-<pid>.json` per process, rewritten atomically (a temporary file in DIR,
then `os.replace`), so `kvguard report DIR` never reads half a file. The file is
`Guard.report()` plus `process` (who wrote it) and `bindings` (what vLLM bound to each layer).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("kvguard")

# Further top-level sections of the report, by name: each callable returns a JSON-able
# value, or None to leave its section out (the connector check adds "connector").
SECTIONS: dict[str, Callable[[], Any]] = {}


class ReportWriter:
    def __init__(self, directory: str, guard: Any, bindings: list[dict[str, Any]]) -> None:
        self.directory = directory
        self.guard = guard
        self.bindings = bindings
        self.path = os.path.join(directory, f"kvguard-{socket.gethostname()}-{os.getpid()}.json")
        self._lock = threading.Lock()

    def process(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "argv0": sys.argv[0] if sys.argv else "",
            "rank": _rank(),
            "mode": self.guard.mode,
        }

    def write(self) -> str | None:
        data = self.guard.report() | {"process": self.process(), "bindings": list(self.bindings)}
        for name, section in SECTIONS.items():
            value = section()
            if value is not None:
                data[name] = value
        if not data["layers"] and not data["bindings"]:
            return None  # a process that never saw a cache (the API server): nothing to say
        with self._lock:
            try:
                os.makedirs(self.directory, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".kvguard-", suffix=".tmp", dir=self.directory)
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f, indent=1)
                os.replace(tmp, self.path)
            except OSError as exc:
                logger.warning("kvguard: could not write the report to %s: %s", self.path, exc)
                return None
        return self.path

    def on_violation(self, _violation: Any) -> None:
        """Written at each violation: a strict-mode engine core may die before its exit."""
        self.write()


def _rank() -> int | str | None:
    """This process's rank in vLLM's world group, when vLLM has set one up."""
    parallel_state = sys.modules.get("vllm.distributed.parallel_state")
    if parallel_state is not None:
        try:
            return parallel_state.get_world_group().rank
        except Exception:  # not initialised (the API server), or an API this adapter predates
            pass
    return os.environ.get("RANK") or os.environ.get("LOCAL_RANK")


def start(directory: str, guard: Any, bindings: list[dict[str, Any]]) -> ReportWriter:
    return ReportWriter(directory, guard, bindings)  # hooks write it at exit
