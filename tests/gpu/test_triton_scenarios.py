"""Scenarios 1 and 2 of the runtime issue on vLLM's own Triton kernels (reshape-and-cache,
unified attention): unguarded corrupts, strict raises before any launch, fix equals both the
SDPA reference (bf16 tolerance) and the correctly configured run bit for bit, warn proceeds."""

from __future__ import annotations

import logging
import traceback

import pytest
import torch

from kvguard.runtime import Guard, KVLayoutMismatchError

from .harness import SCENARIOS, default_sizes, impl_classes, rel_error, run
from .vllm_kernels import load

pytestmark = pytest.mark.gpu

BF16_TOL = 2e-2  # ||out - ref|| / ||ref|| of a correct bf16 run lands near 4e-3
CORRUPT = 5e-2  # a run this far from the reference is wrong, not imprecise


def _guarded(mode: str):
    guard = Guard(mode)
    classes = impl_classes()
    for cls in classes.values():
        guard.wrap(cls)
    return guard, classes


def _errors(seats, outs) -> list[float]:
    return [rel_error(o, s.reference()) for s, o in zip(seats, outs, strict=True)]


def _correct_outputs(name: str) -> list[torch.Tensor]:
    seats, raw = SCENARIOS[name](impl_classes(), default_sizes(), correct=True)
    outs = run(seats, raw)
    assert max(_errors(seats, outs)) < BF16_TOL
    return outs


@pytest.mark.parametrize("name", SCENARIOS)
def test_unguarded_output_is_corrupt(name):
    seats, raw = SCENARIOS[name](impl_classes(), default_sizes())
    errors = _errors(seats, run(seats, raw))
    assert max(errors) > CORRUPT, errors


@pytest.mark.parametrize("name", SCENARIOS)
def test_correctly_configured_run_matches_sdpa(name):
    _correct_outputs(name)


@pytest.mark.parametrize("name", SCENARIOS)
def test_strict_raises_at_the_triton_launch_before_it_runs(name):
    kernels = load()
    _guard, classes = _guarded("strict")
    (first, second), raw = SCENARIOS[name](classes, default_sizes())
    kv0, kv1 = first.make_view(raw), second.make_view(raw)
    first.write_history(kv0)  # the layer that defines the page map passes
    first.step(kv0)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    before, launches = raw.clone(), kernels.launches()
    second.output.fill_(float("nan"))
    poisoned = second.output.clone()
    with pytest.raises(KVLayoutMismatchError) as info:
        second.write_history(kv1)
    # the guard caught the Python-launched kernel inside Triton's launcher (data_ptr)
    frames = [f.filename for f in traceback.extract_tb(info.tb)]
    assert any("/triton/runtime/" in f for f in frames), frames
    with pytest.raises(KVLayoutMismatchError):
        second.step(kv1)  # steady state: raises from the verdict cache, before the split
    assert kernels.launches() == launches, "a Triton kernel ran before the guard raised"
    assert torch.equal(raw, before), "the cache changed before the guard raised"
    assert torch.equal(second.output.isnan(), poisoned.isnan()), "the output was written"
    message = str(info.value)
    for s in (first, second):
        assert s.layer.layer_name in message and type(s.impl).__name__ in message


@pytest.mark.parametrize("name", SCENARIOS)
def test_fix_matches_reference_and_correct_run_bit_for_bit(name, caplog):
    guard, classes = _guarded("fix")
    seats, raw = SCENARIOS[name](classes, default_sizes())
    with caplog.at_level(logging.WARNING, logger="kvguard"):
        outs = run(seats, raw)
    assert max(_errors(seats, outs)) < BF16_TOL, _errors(seats, outs)
    correct = _correct_outputs(name)
    assert all(torch.equal(a, b) for a, b in zip(outs, correct, strict=True))
    assert len([r for r in caplog.records if r.name == "kvguard"]) == 1
    layers = {layer["name"]: layer for layer in guard.report()["layers"]}
    assert layers[seats[1].layer.layer_name]["fix_path"] == "restride"


@pytest.mark.parametrize("name", SCENARIOS)
def test_warn_logs_once_and_proceeds_unchanged(name, caplog):
    _guard, classes = _guarded("warn")
    seats, raw = SCENARIOS[name](classes, default_sizes())
    with caplog.at_level(logging.WARNING, logger="kvguard"):
        outs = run(seats, raw)
    assert len([r for r in caplog.records if r.name == "kvguard"]) == 1
    bare_seats, bare_raw = SCENARIOS[name](impl_classes(), default_sizes())
    bare = run(bare_seats, bare_raw)
    assert all(torch.equal(a, b) for a, b in zip(outs, bare, strict=True))


@pytest.mark.parametrize("name", SCENARIOS)
def test_fix_is_right_from_the_very_first_call(name):
    _guard, classes = _guarded("fix")
    seats, raw = SCENARIOS[name](classes, default_sizes())
    errors = _errors(seats, run(seats, raw))
    assert max(errors) < BF16_TOL, errors


@pytest.mark.parametrize("mode", ["strict", "fix"])
@pytest.mark.parametrize("name", SCENARIOS)
def test_warm_up_never_settles_a_layer(name, mode):
    """Dummy runs without metadata (vLLM's warm-up, one per capture size) precede the first
    real step: strict still stops the wrong layer before any launch, fix is still right."""
    kernels = load()
    guard, classes = _guarded(mode)
    seats, raw = SCENARIOS[name](classes, default_sizes())
    for s in seats:
        s.warm_up(s.make_view(raw), 67)
    assert guard.discoveries == 0
    if mode == "strict":
        first, second = seats
        first.write_history(first.make_view(raw))
        launches = kernels.launches()
        with pytest.raises(KVLayoutMismatchError):
            second.write_history(second.make_view(raw))
        assert kernels.launches() == launches
    else:
        errors = _errors(seats, run(seats, raw))
        assert max(errors) < BF16_TOL, errors
    judged = {layer["name"]: layer for layer in guard.report()["layers"]}
    assert judged[seats[1].layer.layer_name]["untouched_calls"] >= 2 * 67
