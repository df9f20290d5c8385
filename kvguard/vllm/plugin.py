"""The `vllm.general_plugins` entry point: vLLM calls `register()` in every process it starts
(API server, engine core, each worker and tensor-parallel rank).

Off unless KVGUARD_MODE is warn, strict or fix; off, it returns before importing anything,
so a deployment that merely has kvguard installed pays nothing. Any other value raises
ValueError, as `Guard()` does: vLLM does not catch a plugin's error, so the engine does not
start, rather than start unguarded when a mode was asked for. `VLLM_PLUGINS` allowlisting
is vLLM's own: leave `kvguard` out of the list and vLLM never calls this.
"""

from __future__ import annotations

import os

ON_MODES = ("warn", "strict", "fix")


def register() -> None:
    given = os.environ.get("KVGUARD_MODE", "")
    mode = given.strip().lower()
    if mode in ("", "off"):
        return
    if mode not in ON_MODES:
        raise ValueError(
            f"kvguard: KVGUARD_MODE={given!r} is not one of off, warn, strict, fix; set one "
            "of them (or unset KVGUARD_MODE to run without the guard)"
        )
    from .hooks import install

    install(mode)
