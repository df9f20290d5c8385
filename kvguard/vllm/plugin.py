"""The `vllm.general_plugins` entry point: vLLM calls `register()` in every process it starts
(API server, engine core, each worker and tensor-parallel rank).

Off unless KVGUARD_MODE is warn, strict or fix; off, it returns before importing anything,
so a deployment that merely has kvguard installed pays nothing. Any other value raises
ValueError, as `Guard()` does: vLLM does not catch a plugin's error, so the engine does not
start, rather than start unguarded when a mode was asked for. `VLLM_PLUGINS` allowlisting
is vLLM's own: leave `kvguard` out of the list and vLLM never calls this.

KVGUARD_CONNECTOR=verify also checks KV connectors (`connector.py`): what a request loads
is what this engine stored for those tokens. It needs the layer guard's description of each
cache, so it switches the guard on in warn mode when KVGUARD_MODE leaves it off.
"""

from __future__ import annotations

import os

ON_MODES = ("warn", "strict", "fix")


def register() -> None:
    given = os.environ.get("KVGUARD_MODE", "")
    mode = given.strip().lower()
    if mode not in ("", "off", *ON_MODES):
        raise ValueError(
            f"kvguard: KVGUARD_MODE={given!r} is not one of off, warn, strict, fix; set one "
            "of them (or unset KVGUARD_MODE to run without the guard)"
        )
    given_connector = os.environ.get("KVGUARD_CONNECTOR", "")
    connector = given_connector.strip().lower()
    if connector not in ("", "off"):
        if connector != "verify":
            raise ValueError(
                f"kvguard: KVGUARD_CONNECTOR={given_connector!r} is not one of off, verify; set "
                "one of them (or unset KVGUARD_CONNECTOR to run without the connector check)"
            )
        _register_connector_check(mode)
        return
    if mode in ("", "off"):
        return
    from .hooks import install

    install(mode)


def _register_connector_check(mode: str) -> None:
    from . import connector as connector_check
    from .hooks import install

    install(mode if mode in ON_MODES else "warn")
    connector_check.install()
