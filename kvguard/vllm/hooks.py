"""Where kvguard meets vLLM: impl classes are wrapped, cache binding is listened to.

1. Every subclass of vLLM's attention impl base is wrapped with the guard: the ones that exist
   when the plugin loads, and, through an `__init_subclass__` hook on the base, every one
   defined later (backends are imported lazily; models define their own impls).
2. The functions that allocate the caches and bind them to layers are wrapped once their
   modules are imported: the model runner's `initialize_kv_cache_tensors` (vLLM 0.2x and newer
   alike) and model runner V2's `init_kv_cache`. Afterwards each layer's bound cache, attention
   type, backend and KV-sharing target are recorded, and every `KVCacheTensor` that states its
   page map is declared to the guard.
3. A violation that stops a worker reaches the user in full: the worker logs it at ERROR and
   leaves it in a file named by KVGUARD_ERROR_FILE (set by the first process, inherited by the
   ones it starts), and vLLM's `EngineDeadError` in the user's process carries it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import importlib.abc
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from kvguard.runtime import Guard
from kvguard.runtime.records import Violation
from kvguard.runtime.seats import NothingToWrap

from . import specs
from .logs import guard_on_line, route_through_vllm, summary_line, unguarded_line

logger = logging.getLogger("kvguard")

IMPL_BASES = (
    ("vllm.v1.attention.backend", "AttentionImplBase"),
    ("vllm.v1.attention.backend", "AttentionImpl"),
    ("vllm.attention.backends.abstract", "AttentionImpl"),
)
ENGINE_ERRORS_MODULE = "vllm.v1.engine.exceptions"
ERROR_FILE_ENV = "KVGUARD_ERROR_FILE"
RUNNER_MODULE = "vllm.v1.worker.gpu_model_runner"
RUNNER_CLASS = "GPUModelRunner"
BINDING_METHOD = "initialize_kv_cache_tensors"
V2_BINDING_MODULE = "vllm.v1.worker.gpu.attn_utils"  # model runner V2 imports it by name:
V2_BINDING_FUNCTION = "init_kv_cache"  # patched as soon as the module is, before that import

_lock = threading.Lock()
_state: dict[str, Any] = {}


def install(mode: str) -> Guard:
    """Switch the guard on in this process (idempotent); returns the process's guard."""
    with _lock:
        if "guard" in _state:
            return _state["guard"]
        route_through_vllm()
        bindings: list[dict[str, Any]] = []
        # Inside vLLM errors reach clients (an HTTP response): they carry the one-line
        # summary, the log and the report the full diagnostic.
        guard = Guard(mode, on_violation=_on_violation, brief_errors=True)
        _state.update(guard=guard, bindings=bindings, writer=None, announced=False)
        directory = os.environ.get("KVGUARD_REPORT")
        if directory:
            from .reports import start

            _state["writer"] = start(directory, guard, bindings)
        _at_exit(_summarise)
    _share_errors_with_the_user()
    wrapped = _wrap_impl_classes(guard)
    after_import(RUNNER_MODULE, _hook_binding)
    after_import(V2_BINDING_MODULE, _hook_v2_binding)
    logger.debug("kvguard: mode %s, %d attention impl classes wrapped", mode, wrapped)
    return guard


def current_guard() -> Guard | None:
    return _state.get("guard")


def _on_violation(violation: Violation) -> None:
    if violation.action in ("raised", "refused"):
        # The exception travels through vLLM's engine core, which may report only a generic
        # engine failure to the user: leave the summary for the user's process to add.
        _leave_for_the_user(violation.summary())
    writer = _state.get("writer")
    if writer is not None:
        writer.on_violation(violation)


def _at_exit(callback: Callable[[], None]) -> None:
    """Run `callback` once when this process ends: at interpreter exit, or (in a forked
    multiprocessing child, which leaves through os._exit and skips atexit) at multiprocessing's
    own exit hooks."""
    done = threading.Event()

    def once() -> None:
        if not done.is_set():
            done.set()
            callback()

    atexit.register(once)
    import multiprocessing.util

    multiprocessing.util.Finalize(None, once, exitpriority=100)


def _summarise() -> None:
    """One line at shutdown, from each process that held caches."""
    guard = _state.get("guard")
    if guard is None or not (guard.layers or _state.get("bindings")):
        return
    writer = _state.get("writer")
    path = writer.write() if writer is not None else None
    level, text = summary_line(guard, path, _state.get("bindings"))
    logger.log(level, "%s", text)


# 3. Errors that must reach the user's process --------------------------------------------
def _share_errors_with_the_user() -> None:
    path = os.environ.get(ERROR_FILE_ENV)
    if path is None:  # the first process: its children inherit the name
        path = os.path.join(tempfile.gettempdir(), f"kvguard-{os.getpid()}-error.txt")
        os.environ[ERROR_FILE_ENV] = path
        with contextlib.suppress(OSError):
            os.remove(path)
        atexit.register(_remove_quietly, path)
        after_import(ENGINE_ERRORS_MODULE, _carry_in_engine_dead_error)
    _state["error_file"] = path


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def _leave_for_the_user(message: str) -> None:
    path = _state.get("error_file")
    if path and not os.path.exists(path):  # the first violation is the one to read
        with contextlib.suppress(OSError), open(path, "w", encoding="utf-8") as f:
            f.write(message)


def _carry_in_engine_dead_error(module: Any) -> None:
    cls = getattr(module, "EngineDeadError", None)
    if not isinstance(cls, type) or getattr(cls.__init__, "__kvguard_carries__", False):
        return
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        path = _state.get("error_file")
        try:
            with open(path, encoding="utf-8") as f:  # type: ignore[arg-type]
                message = f.read()
        except (OSError, TypeError):
            return
        if message and self.args:
            self.args = (f"{self.args[0]}\n{message}", *self.args[1:])

    __init__.__kvguard_carries__ = True
    cls.__init__ = __init__


# 1. Impl classes --------------------------------------------------------------------------
def _impl_bases() -> list[type]:
    bases: list[type] = []
    for module_name, name in IMPL_BASES:
        try:
            base = getattr(importlib.import_module(module_name), name, None)
        except ImportError:
            continue
        if isinstance(base, type) and not any(issubclass(base, b) for b in bases):
            bases.append(base)
    return bases


def _wrap_impl_classes(guard: Guard) -> int:
    count = 0
    for base in _impl_bases():
        for cls in _all_subclasses(base):
            count += _wrap(guard, cls)
        _wrap_future_subclasses(base, guard)
    return count


def _wrap(guard: Guard, cls: type) -> int:
    """Wrap one impl class; 0 for one without a method taking `layer` and `kv_cache` (an
    abstract base, an impl that never touches the cache), which has nothing to guard."""
    try:
        guard.wrap(cls)
    except NothingToWrap as exc:
        _state.setdefault("unwrapped", {})[cls.__qualname__] = str(exc)
        return 0
    return 1


def _all_subclasses(base: type) -> list[type]:
    seen: dict[type, None] = {}
    todo = list(base.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen[cls] = None
            todo.extend(cls.__subclasses__())
    return list(seen)


def _wrap_future_subclasses(base: type, guard: Guard) -> None:
    if getattr(base, "__kvguard_subclass_hook__", None) is guard:
        return
    previous = base.__dict__.get("__init_subclass__")

    def __init_subclass__(cls, **kwargs):
        if previous is not None:
            previous.__get__(None, cls)(**kwargs)
        else:
            super(base, cls).__init_subclass__(**kwargs)
        _wrap(guard, cls)

    base.__init_subclass__ = classmethod(__init_subclass__)
    base.__kvguard_subclass_hook__ = guard


# 2. The cache-binding point ---------------------------------------------------------------
def _hook_binding(module: Any) -> None:
    runner = getattr(module, RUNNER_CLASS, None)
    method = getattr(runner, BINDING_METHOD, None) if runner is not None else None
    if method is None:
        logger.warning(
            "kvguard: %s.%s.%s not found; page maps will come from each region's first layer",
            RUNNER_MODULE,
            RUNNER_CLASS,
            BINDING_METHOD,
        )
        return
    if getattr(method, "__kvguard_binding__", False):
        return

    @functools.wraps(method)
    def initialize_kv_cache_tensors(self, kv_cache_config, *args, **kwargs):
        result = method(self, kv_cache_config, *args, **kwargs)
        context = getattr(self, "compilation_config", None)
        _after_binding(getattr(context, "static_forward_context", None), kv_cache_config)
        return result

    initialize_kv_cache_tensors.__kvguard_binding__ = True
    setattr(runner, BINDING_METHOD, initialize_kv_cache_tensors)


def _hook_v2_binding(module: Any) -> None:
    function = getattr(module, V2_BINDING_FUNCTION, None)
    if function is None or getattr(function, "__kvguard_binding__", False):
        return

    @functools.wraps(function)
    def init_kv_cache(*args, **kwargs):
        result = function(*args, **kwargs)
        context = kwargs.get("forward_context", args[0] if args else None)
        config = kwargs.get("kv_cache_config", args[1] if len(args) > 1 else None)
        _after_binding(context, config)
        return result

    init_kv_cache.__kvguard_binding__ = True
    setattr(module, V2_BINDING_FUNCTION, init_kv_cache)


def _after_binding(context: Any, kv_cache_config: Any) -> None:
    try:
        on_caches_bound(context, kv_cache_config)
    except Exception:  # never break engine start-up over bookkeeping
        logger.exception("kvguard: could not read vLLM's cache binding")


def on_caches_bound(context: Any, kv_cache_config: Any) -> None:
    """Record what vLLM just bound to each layer of `context` (layer name -> attention layer,
    vLLM's static forward context) and declare the page maps `kv_cache_config` states."""
    guard = _state.get("guard")
    if guard is None or not isinstance(context, dict):
        return
    bound: dict[str, Any] = {}
    sharing: dict[str, str] = {}
    records = []
    for name, layer in dict(context).items():
        impl = getattr(layer, "impl", None)
        if impl is None:
            continue
        kv = specs.bound_tensor(getattr(layer, "kv_cache", None))
        target = getattr(layer, "kv_sharing_target_layer_name", None) or getattr(
            impl, "kv_sharing_target_layer_name", None
        )
        attn_type = getattr(layer, "attn_type", None) or getattr(impl, "attn_type", None)
        records.append(
            {
                "layer": name,
                "impl": type(impl).__qualname__,
                "backend": specs.backend_name(layer),
                "attn_type": str(getattr(attn_type, "value", attn_type)),
                "kv_sharing_target": target if isinstance(target, str) else None,
                "kv_cache": _geometry(kv),
            }
        )
        if kv is not None:
            bound[name] = kv
            if isinstance(target, str) and target:
                sharing[name] = target
    _describe(bound, context, kv_cache_config)
    declarations = specs.declarations(kv_cache_config, bound, sharing)
    for declaration in declarations:
        try:
            declaration.declare(guard)
        except (TypeError, ValueError) as exc:
            logger.warning(
                "kvguard: vLLM's page map for layers %s was not usable (%s); inferring it",
                list(declaration.layers),
                exc,
            )
    _state["bindings"].extend(records)
    if not _state.get("announced") and bound:
        _state["announced"] = True
        declared = sum(len(d.layers) for d in declarations)
        logger.info("%s", guard_on_line(guard.mode, _state["bindings"], declared))
    unguarded = unguarded_line(records, _state.get("unwrapped", {}))
    if unguarded:
        logger.warning("%s", unguarded)


def _describe(bound: dict[str, Any], context: dict, kv_cache_config: Any) -> None:
    """Register what vLLM declares about each bound cache, for describe_kv_cache()."""
    from kvguard.runtime.describe import register

    for name, kv in bound.items():
        spec = specs._spec_of(kv_cache_config, name)
        backend = specs.backend_class(context[name])
        # asked when a connector needs it: by then the guard has seen the layer's kernels
        register(kv, functools.partial(_resolve, name, kv, spec, backend), layer=name)


def _resolve(name: str, kv: Any, spec: Any, backend: Any):
    from .describe import describe

    guard = _state.get("guard")
    record = next((r for r in guard.layers if r.name == name), None) if guard else None
    observed = None
    if record is not None and record.status == "ok":
        observed = {v.kind: v.geometry for v in record.views if v.kind in ("K", "V")}
    return describe(name, kv, spec, backend, observed)


def _geometry(kv: Any) -> dict[str, Any] | None:
    if kv is None:
        return None
    return {
        "shape": list(kv.shape),
        "stride": list(kv.stride()),
        "offset": kv.storage_offset(),
        "dtype": str(kv.dtype).removeprefix("torch."),
        "storage_ptr": hex(kv.untyped_storage().data_ptr()),
        "storage_nbytes": kv.untyped_storage().nbytes(),
    }


# Running code after a module is imported, without importing it ourselves ------------------
def after_import(name: str, callback: Callable[[Any], None]) -> None:
    """Call `callback(module)` once `name` is imported (now, if it already is)."""
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    sys.meta_path.insert(0, _AfterImport(name, callback))


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, callback: Callable[[Any], None]) -> None:
        self.name = name
        self.callback = callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module
        callback = self.callback

        def exec_then_hook(module):
            exec_module(module)
            callback(module)

        spec.loader.exec_module = exec_then_hook
        return spec
