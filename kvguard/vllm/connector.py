"""KVGUARD_CONNECTOR=verify: check that what a KV connector loads is what this engine stored.

vLLM's V1 connector API (`KVConnectorBase_V1`) is worker-side `start_load_kv`,
`wait_for_layer_load`, `save_kv_layer` and `wait_for_save`, the last called once per step
after the forward. Every connector instance (any subclass, created by vLLM's factory or
not) gets its `wait_for_save` wrapped when the base class's `__init__` runs; at that point of
each step, before the connector's own code:

1. the blocks of each request that start the step already computed (a new or resumed
   request with computed tokens: loaded by the connector, or hits of the local prefix cache)
   are fingerprinted and compared with what was stored for the same tokens;
2. the blocks whose content became final in this step are fingerprinted and stored.

Everything is keyed by what the worker itself knows the content to be: a chained hash of the
request's token ids block by block (with its LoRA and multimodal identifiers), read from the
scheduler's output and the model runner's request state (captured by wrapping the runner's
`execute_model`). Nothing comes from the connector's own keys or metadata, and the scheduler
process is not needed: a scheduler and workers in separate processes each do their part.
K and V are taken from `describe_kv_cache` (the engine's declaration), never from the shape.

The fingerprint, compare and diagnose logic is the runtime core's (`kvguard.runtime.
loadverify`, torch only); this module only knows where vLLM keeps things.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from array import array
from collections.abc import Hashable
from typing import Any

logger = logging.getLogger("kvguard")

CONNECTOR_BASE_MODULE = "vllm.distributed.kv_transfer.kv_connector.v1.base"
CONNECTOR_BASE = "KVConnectorBase_V1"
RUNNERS = (
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner"),
    ("vllm.v1.worker.gpu.model_runner", "GPUModelRunner"),
)
MAX_LOGGED = 20  # one ERROR line per mismatching request, up to this many per process

_state: dict[str, Any] = {"step": None, "logged": 0}
_local = threading.local()


def install() -> None:
    """Hook connectors and model runners as their modules are imported (idempotent)."""
    from .hooks import after_import

    if _state.get("installed"):
        return
    _state["installed"] = True
    after_import(CONNECTOR_BASE_MODULE, _hook_connector_base)
    for module, name in RUNNERS:
        after_import(module, functools.partial(_hook_runner, name))
    from . import reports
    from .hooks import _at_exit

    reports.SECTIONS["connector"] = report_section
    _at_exit(_summarise)


def _summarise() -> None:
    """One line at shutdown, from each process whose connector stepped."""
    v = _state.get("verifier")
    if v is None:
        return
    c = v.counts()
    level = logging.ERROR if c["mismatches"] else logging.INFO
    logger.log(
        level,
        "kvguard: connector check (%s): %d blocks stored, %d loaded blocks verified, %d "
        "unverified, %d load mismatch(es)",
        ", ".join(sorted(_state.get("connectors", ()))),
        c["stored_blocks"],
        c["verified_blocks"],
        c["unverified_blocks"],
        c["mismatches"],
    )


def verifier():
    """This process's LoadVerifier (created at the first connector step)."""
    found = _state.get("verifier")
    if found is None:
        from kvguard.runtime.loadverify import LoadVerifier

        found = _state["verifier"] = LoadVerifier()
    return found


def report_section() -> dict[str, Any] | None:
    v = _state.get("verifier")
    if v is None:
        return None
    return {
        "connectors": sorted(_state.get("connectors", ())),
        **v.counts(),
        "check_seconds": _state.get("seconds", 0.0),  # wall time spent in the check
        "covered_layers": sorted(_state.get("covered", ())),
        "uncovered_layers": dict(sorted(_state.get("uncovered", {}).items())),
        "load_mismatches": [m.to_json() for m in v.mismatches],
    }


# Hooks ------------------------------------------------------------------------------------
def _hook_connector_base(module: Any) -> None:
    base = getattr(module, CONNECTOR_BASE, None)
    init = getattr(base, "__init__", None)
    if init is None or getattr(init, "__kvguard_connector__", False):
        return

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        _instrument(self)

    __init__.__kvguard_connector__ = True
    base.__init__ = __init__


def _instrument(connector: Any) -> None:
    role = getattr(getattr(connector, "role", None), "name", "")
    wait_for_save = getattr(connector, "wait_for_save", None)
    if role == "SCHEDULER" or not callable(wait_for_save):
        return  # the scheduler side holds no cache; the worker side does the checking

    @functools.wraps(wait_for_save)
    def wait_for_save_checked(*args, **kwargs):
        if getattr(_local, "inside", False):  # a MultiConnector's parts: checked once
            return wait_for_save(*args, **kwargs)
        _local.inside = True
        try:
            start = time.perf_counter()
            try:
                _at_step_end(connector)
            except Exception:  # bookkeeping must never break a step
                logger.exception("kvguard: the connector check failed; this step is unchecked")
            _state["seconds"] = _state.get("seconds", 0.0) + time.perf_counter() - start
            return wait_for_save(*args, **kwargs)
        finally:
            _local.inside = False

    connector.wait_for_save = wait_for_save_checked
    _state.setdefault("connectors", set()).add(type(connector).__qualname__)


def _hook_runner(name: str, module: Any) -> None:
    runner = getattr(module, name, None)
    method = getattr(runner, "execute_model", None)
    if method is None or getattr(method, "__kvguard_step__", False):
        return

    @functools.wraps(method)
    def execute_model(self, scheduler_output, *args, **kwargs):
        _state["step"] = (self, scheduler_output)
        return method(self, scheduler_output, *args, **kwargs)

    execute_model.__kvguard_step__ = True
    runner.execute_model = execute_model


# One step ---------------------------------------------------------------------------------
def _at_step_end(connector: Any) -> None:
    step = _state.get("step")
    if step is None:
        return
    runner, output = step
    if getattr(output, "kv_connector_metadata", None) is None or _state.get("done") is output:
        return
    _state["done"] = output  # one check per scheduler step, however often this is called
    plan = _plan(runner, output)
    if plan is None:
        return
    checks, stores = plan
    if not checks and not stores:  # most decode steps: no block started or completed
        return
    from kvguard.runtime.describe import UndescribedKVCache, describe_kv_cache

    from .specs import bound_tensor

    check = verifier()
    context = _forward_layers(connector, runner)
    covered, uncovered = _state.setdefault("covered", set()), _state.setdefault("uncovered", {})
    name = type(connector).__qualname__
    for layer, group in _layer_groups(runner).items():
        if group is None:
            uncovered.setdefault(layer, "not a full-attention cache group")
            continue
        kv = bound_tensor(getattr(context.get(layer), "kv_cache", None))
        if kv is None:
            continue
        try:
            desc, key, value = _planes(layer, kv, describe_kv_cache)
        except (UndescribedKVCache, ValueError) as exc:
            uncovered[layer] = str(exc)
            continue
        covered.add(layer)
        uncovered.pop(layer, None)
        for request, block_ids, chain in checks.get(group, ()):
            check.check(
                layer, request, key, value, block_ids, chain, connector=name, cache=str(desc)
            )
        ids = [b for b, _ in stores.get(group, ())]
        if ids:
            check.store(layer, key, value, ids, [k for _, k in stores[group]])
    _report(check.settle())


def _planes(layer: str, kv: Any, describe: Any) -> tuple[Any, Any, Any]:
    """(description, K view, V view) of a layer's bound cache, made once per tensor."""
    planes = _state.setdefault("planes", {})
    tag = (kv.data_ptr(), tuple(kv.shape), kv.stride())
    found = planes.get(layer)
    if found is None or found[0] != tag:
        desc = describe(kv, layer=layer)
        found = planes[layer] = (tag, desc, *desc.split(kv))
    return found[1:]


def _report(found: list) -> None:
    if not found:
        return
    by_request: dict[str, list] = {}
    for m in found:
        by_request.setdefault(m.request, []).append(m)
    for ms in by_request.values():
        if _state["logged"] < MAX_LOGGED:
            _state["logged"] += 1
            more = f" (and {len(ms) - 1} more layer(s))" if len(ms) > 1 else ""
            logger.error("%s%s; full diagnosis: kvguard report", ms[0].summary(), more)
        logger.debug("%s", "\n\n".join(str(m) for m in ms))
    from .hooks import _state as guard_state

    writer = guard_state.get("writer")
    if writer is not None:
        writer.write()


def _forward_layers(connector: Any, runner: Any) -> dict[str, Any]:
    for owner in (runner, getattr(connector, "_vllm_config", None)):
        config = getattr(owner, "compilation_config", None) or getattr(
            getattr(owner, "vllm_config", None), "compilation_config", None
        )
        context = getattr(config, "static_forward_context", None)
        if isinstance(context, dict):
            return context
    return {}


def _layer_groups(runner: Any) -> dict[str, int | None]:
    """Layer name -> its cache group, None where blocks do not map to token ranges one to
    one (sliding windows free their early blocks; mamba states are no token blocks)."""
    found = _state.get("groups")
    if found is not None:
        return found
    groups: dict[str, int | None] = {}
    config = getattr(runner, "kv_cache_config", None)
    for g, group in enumerate(getattr(config, "kv_cache_groups", ())):
        spec = group.kv_cache_spec
        full = getattr(spec, "num_kv_heads", None) is not None and (
            getattr(spec, "sliding_window", None) is None
            and getattr(spec, "attention_chunk_size", None) is None
        )
        for layer in group.layer_names:
            groups[layer] = g if full else None
    if groups:
        _state["groups"] = groups
    return groups


# What the worker knows about each request's content ----------------------------------------
def _plan(runner: Any, output: Any):
    """({group: [(request, block ids, chain)]} to check, {group: [(block id, key)]} to
    store), from the scheduler's output and the runner's request state."""
    requests = getattr(runner, "requests", None)
    config = getattr(runner, "kv_cache_config", None)
    if not isinstance(requests, dict) or config is None:
        _warn_once("this model runner keeps no per-request token ids; loads stay unchecked")
        return None
    block_sizes = [g.kv_cache_spec.block_size for g in config.kv_cache_groups]
    chains: dict[str, list] = _state.setdefault("chains", {})
    for finished in getattr(output, "finished_req_ids", ()) or ():
        chains.pop(finished, None)
    starting: dict[str, int] = {}
    for new in output.scheduled_new_reqs:
        chains.pop(new.req_id, None)
        starting[new.req_id] = new.num_computed_tokens
    cached = output.scheduled_cached_reqs
    computed = dict(zip(cached.req_ids, cached.num_computed_tokens, strict=False))
    for rid in getattr(cached, "resumed_req_ids", ()) or ():
        starting[rid] = computed.get(rid, 0)
    computed.update(starting)
    checks: dict[int, list] = {}
    stores: dict[int, list] = {}
    spec_tokens = getattr(output, "scheduled_spec_decode_tokens", {}) or {}
    for rid, scheduled in output.num_scheduled_tokens.items():
        state = requests.get(rid)
        if state is None or rid not in computed:
            continue
        tokens = _known_tokens(state)
        if tokens is None:
            continue
        start = computed[rid]
        end = min(start + scheduled - len(spec_tokens.get(rid, ())), len(tokens))
        extra = _extra_keys(state)
        for g, size in enumerate(block_sizes):
            ids = list(state.block_ids[g]) if g < len(state.block_ids) else []
            chain = _chain(chains, rid, g, tokens, size, extra, max(end, start))
            if rid in starting and start >= size:
                n = min(start // size, len(ids), len(chain))
                checks.setdefault(g, []).append((rid, ids[:n], chain[:n]))
            for j in range(start // size, min(end // size, len(ids), len(chain))):
                stores.setdefault(g, []).append((ids[j], chain[j]))
    return checks, stores


def _known_tokens(state: Any) -> list[int] | None:
    prompt = getattr(state, "prompt_token_ids", None)
    if prompt is None:  # prompt embeddings: no token ids to name the content by
        return None
    tokens = list(prompt) + list(getattr(state, "output_token_ids", ()) or ())
    for i, t in enumerate(tokens):  # placeholders of tokens not yet sampled (async scheduling)
        if t < 0:
            return tokens[:i]
    return tokens


def _extra_keys(state: Any) -> bytes:
    lora = getattr(state, "lora_request", None)
    lora_name = getattr(lora, "lora_name", None) or getattr(lora, "name", None)
    mm = [
        str(getattr(f, "identifier", "") or getattr(f, "mm_hash", ""))
        for f in getattr(state, "mm_features", None) or ()
    ]
    return repr((lora_name, mm)).encode()


def _chain(chains, rid, group, tokens, size, extra, upto) -> list[Hashable]:
    """The content keys of the request's full blocks up to token `upto`: block j's key
    hashes block j-1's key and block j's token ids, so it names the whole prefix."""
    chain = chains.setdefault(rid, {}).setdefault(group, [])
    parent = chain[-1] if chain else hashlib.blake2b(extra, digest_size=16).digest()
    for j in range(len(chain), min(upto, len(tokens)) // size):
        block = array("q", tokens[j * size : (j + 1) * size]).tobytes()
        parent = hashlib.blake2b(parent + block, digest_size=16).digest()
        chain.append(parent)
    return chain


def _warn_once(message: str) -> None:
    if not _state.get(message):
        _state[message] = True
        logger.warning("kvguard: %s", message)
