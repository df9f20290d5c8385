"""The `vllm.general_plugins` entry point: vLLM calls `register()` in every process it starts
(API server, engine core, each worker and tensor-parallel rank).

Off unless KVGUARD_MODE is warn, strict or fix; off, it returns before importing anything,
so a deployment that merely has kvguard installed pays nothing. `VLLM_PLUGINS` allowlisting
is vLLM's own: leave `kvguard` out of the list and vLLM never calls this.

KVGUARD_CONNECTOR=verify also checks KV connectors (`connector.py`): what a request loads
is what this engine stored for those tokens. It needs the layer guard's description of each
cache, so it switches the guard on in warn mode when KVGUARD_MODE leaves it off.
"""

from __future__ import annotations

import os

ON_MODES = ("warn", "strict", "fix")


def register() -> None:
    mode = os.environ.get("KVGUARD_MODE", "").strip().lower()
    connector = os.environ.get("KVGUARD_CONNECTOR", "").strip().lower()
    if connector not in ("", "off"):
        _register_connector_check(connector, mode)
        return
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


def _register_connector_check(connector: str, mode: str) -> None:
    import logging

    if connector != "verify":
        logging.getLogger("kvguard").warning(
            "kvguard: KVGUARD_CONNECTOR=%r is not one of off, verify; the connector check "
            "stays off",
            connector,
        )
        if mode in ON_MODES:
            from .hooks import install

            install(mode)
        return
    from . import connector as connector_check
    from .hooks import install

    install(mode if mode in ON_MODES else "warn")
    connector_check.install()
