"""KVGUARD_CONNECTOR as the plugin reads it: an unknown value stops the engine's start with
one error naming the values, as an unknown KVGUARD_MODE does, and switches nothing on (the
engine tests cover verify and unset)."""

from __future__ import annotations

import sys

import pytest

from kvguard.vllm import plugin


def test_an_unknown_value_is_refused_and_switches_nothing_on(monkeypatch):
    monkeypatch.setenv("KVGUARD_CONNECTOR", "Verfy")
    monkeypatch.delenv("KVGUARD_MODE", raising=False)
    before = set(sys.modules)
    with pytest.raises(ValueError, match=r"KVGUARD_CONNECTOR='Verfy' is not one of off, verify"):
        plugin.register()
    assert not {m for m in set(sys.modules) - before if m.startswith("kvguard")}


def test_an_unknown_mode_is_refused_before_the_connector_check(monkeypatch):
    monkeypatch.setenv("KVGUARD_CONNECTOR", "verify")
    monkeypatch.setenv("KVGUARD_MODE", "strictt")
    with pytest.raises(ValueError, match=r"KVGUARD_MODE='strictt'"):
        plugin.register()


@pytest.mark.parametrize("value", ["", "off", " OFF "])
def test_off_or_unset_imports_nothing(monkeypatch, value):
    monkeypatch.setenv("KVGUARD_CONNECTOR", value)
    monkeypatch.delenv("KVGUARD_MODE", raising=False)
    before = set(sys.modules)
    plugin.register()
    assert not {m for m in set(sys.modules) - before if m.startswith("kvguard")}
