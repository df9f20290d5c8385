"""The `vllm.general_plugins` entry point: vLLM calls `register()` in every process it starts
(API server, engine core, each worker and tensor-parallel rank).

Off unless KVGUARD_MODE is warn, strict or fix; off, it returns before importing anything,
so a deployment that merely has kvguard installed pays nothing. `VLLM_PLUGINS` allowlisting
is vLLM's own: leave `kvguard` out of the list and vLLM never calls this.
"""

from __future__ import annotations

import os

ON_MODES = ("warn", "strict", "fix")


def register() -> None:
    mode = os.environ.get("KVGUARD_MODE", "").strip().lower()
    if mode in ("", "off"):
        return
    if mode not in ON_MODES:
        import logging

        logging.getLogger("kvguard").warning(
            "kvguard: KVGUARD_MODE=%r is not one of off, warn, strict, fix; the guard stays off",
            mode,
        )
        return
    from .hooks import install

    install(mode)
