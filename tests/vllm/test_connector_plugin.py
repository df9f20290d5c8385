"""KVGUARD_CONNECTOR as the plugin reads it: an unknown value is one warning naming the
values, and switches nothing on (the engine tests cover verify and unset)."""

from __future__ import annotations

import logging
import sys

from kvguard.vllm import plugin


def test_an_unknown_value_warns_and_stays_off(monkeypatch, caplog):
    monkeypatch.setenv("KVGUARD_CONNECTOR", "verfy")
    monkeypatch.delenv("KVGUARD_MODE", raising=False)
    before = set(sys.modules)
    with caplog.at_level(logging.WARNING, logger="kvguard"):
        plugin.register()
    (record,) = caplog.records
    assert "KVGUARD_CONNECTOR='verfy' is not one of off, verify" in record.getMessage()
    assert not {m for m in set(sys.modules) - before if m.startswith("kvguard")}
