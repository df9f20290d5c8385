"""PositionWrapper gives libcst's positions, and skips only visits that could do nothing."""

from __future__ import annotations

import libcst as cst
from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider

from kvguard.lint.positions import PositionWrapper
from tests.lint.kvg_helpers import SCATTERED_SOURCE


def test_positions_equal_libcsts() -> None:
    ours = PositionWrapper(cst.parse_module(SCATTERED_SOURCE), unsafe_skip_copy=True)
    theirs = MetadataWrapper(ours.module, unsafe_skip_copy=True)
    assert dict(ours.resolve(PositionProvider)) == dict(theirs.resolve(PositionProvider))


def test_batchable_providers_still_run() -> None:
    wrapper = PositionWrapper(cst.parse_module(SCATTERED_SOURCE))
    parents = wrapper.resolve(ParentNodeProvider)
    assert parents[wrapper.module.body[0]] is wrapper.module


def test_an_empty_batched_visit_is_skipped(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import libcst.metadata.wrapper as libcst_wrapper

    visited = []
    monkeypatch.setattr(libcst_wrapper, "visit_batched", lambda *a, **k: visited.append(a))
    PositionWrapper(cst.parse_module("x = 1\n")).resolve(PositionProvider)
    assert visited == []
