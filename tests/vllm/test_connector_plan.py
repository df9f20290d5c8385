"""What the worker side of the connector check derives from one scheduler step
(kvguard/vllm/connector.py `_plan`): which blocks a request starts from (to verify), which
blocks became final (to store), each under the key of its token content. The shapes are
those of vLLM 0.32's SchedulerOutput and CachedRequestState (tested whole in
test_connector_engine.py); here each rule is pinned on its own.
"""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from kvguard.vllm import connector

BS = 4


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch):
    monkeypatch.setattr(connector, "_state", {"step": None, "logged": 0})


def _runner(**requests):
    group = NS(kv_cache_spec=NS(block_size=BS, num_kv_heads=1), layer_names=["l0"])
    return NS(requests=requests, kv_cache_config=NS(kv_cache_groups=[group]))


def _state(prompt, output=(), blocks=(10, 11, 12, 13), lora=None):
    return NS(
        prompt_token_ids=list(prompt),
        output_token_ids=list(output),
        block_ids=(list(blocks),),
        lora_request=lora,
        mm_features=[],
    )


def _output(new=(), cached=(), scheduled=None, spec=None, finished=()):
    return NS(
        scheduled_new_reqs=[NS(req_id=r, num_computed_tokens=n) for r, n in new],
        scheduled_cached_reqs=NS(
            req_ids=[r for r, _ in cached],
            num_computed_tokens=[n for _, n in cached],
            resumed_req_ids=set(),
        ),
        num_scheduled_tokens=scheduled or {},
        scheduled_spec_decode_tokens=spec or {},
        finished_req_ids=set(finished),
    )


def test_a_new_request_with_computed_tokens_is_checked_and_its_new_blocks_stored():
    runner = _runner(a=_state(range(10)))
    checks, stores = connector._plan(runner, _output(new=[("a", 4)], scheduled={"a": 6}))
    ((request, ids, chain),) = checks[0]
    assert (request, ids, len(chain)) == ("a", [10], 1)
    assert [b for b, _ in stores[0]] == [11]  # tokens 4..9: block 1 completes, block 2 not


def test_keys_name_the_whole_prefix_not_the_block_ids():
    runner = _runner(a=_state(range(8)), b=_state(range(8), blocks=(20, 21)))
    _, a = connector._plan(runner, _output(new=[("a", 0)], scheduled={"a": 8}))
    _, b = connector._plan(runner, _output(new=[("b", 0)], scheduled={"b": 8}))
    assert [k for _, k in a[0]] == [k for _, k in b[0]]
    c = _runner(c=_state([99, *range(1, 8)]))
    _, c_stores = connector._plan(c, _output(new=[("c", 0)], scheduled={"c": 8}))
    # block 1 holds the same tokens, after another first block: another key
    assert all(x[1] != y[1] for x, y in zip(a[0], c_stores[0], strict=True))


def test_lora_is_part_of_the_key():
    plain = _runner(a=_state(range(4)))
    lora = _runner(a=_state(range(4), lora=NS(lora_name="adapter")))
    _, s1 = connector._plan(plain, _output(new=[("a", 0)], scheduled={"a": 4}))
    connector._state["chains"] = {}
    _, s2 = connector._plan(lora, _output(new=[("a", 0)], scheduled={"a": 4}))
    assert s1[0][0][1] != s2[0][0][1]


def test_decode_steps_store_a_block_when_it_fills_and_check_nothing():
    runner = _runner(a=_state(range(6), output=[7, 8]))
    checks, stores = connector._plan(runner, _output(cached=[("a", 7)], scheduled={"a": 1}))
    assert checks == {} and [b for b, _ in stores[0]] == [11]  # token 7 completes block 1


def test_speculative_tokens_and_unsampled_placeholders_are_not_content():
    runner = _runner(a=_state(range(6), output=[7, -1]))
    _, stores = connector._plan(runner, _output(cached=[("a", 6)], scheduled={"a": 2}))
    assert stores == {}  # token 7 is a placeholder: block 1 is not known yet
    runner = _runner(b=_state(range(7), output=[9]))
    _, stores = connector._plan(
        runner, _output(cached=[("b", 7)], scheduled={"b": 3}, spec={"b": [1, 2]})
    )
    assert [b for b, _ in stores[0]] == [11]  # the one real token completes block 1 only


def test_prompt_embeddings_are_left_out():
    state = _state(range(8))
    state.prompt_token_ids = None
    checks, stores = connector._plan(_runner(a=state), _output(new=[("a", 4)], scheduled={"a": 4}))
    assert checks == {} and stores == {}
