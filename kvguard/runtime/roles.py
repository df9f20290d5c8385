"""The role each view plays at the kernel call, read from what the code says, not from the
order the views were made in (`v, k = kv.unbind(0)` makes V's bytes first and calls them k).

In order of preference, a view is named by:
1. the schema of the custom op it is passed to (`key_cache`, `value_cache`, `kv_c_cache`);
2. the parameter (or local) name it is bound to in the function the impl called, such as a
   Python kernel launcher `unified_attention(q, k, v, ...)` whose launch reads `data_ptr()`;
3. the impl's own local name for it (`value_cache[blocks] = v` names it value_cache).
A name that says K or V (`records.role_kind`) is preferred over one that does not.

Only first-sight discovery calls this; steady state never does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from types import CodeType, FrameType
from typing import Any

from .records import role_kind

_OWN_FILES = (__file__.rsplit("/", 1)[0],)


def schema_names(func: Any, args: tuple, kwargs: dict) -> dict[int, str]:
    """{id(tensor argument): its name in the op's schema}, for non-aten ops with a schema."""
    schema = _schema(func, args, kwargs)
    if schema is None:
        return {}
    names: dict[int, str] = {}
    params = [a.name for a in schema.arguments]
    for name, value in zip(params, args, strict=False):
        names.setdefault(id(value), name)
    for name, value in kwargs.items():
        names.setdefault(id(value), name)
    return names


def _schema(func: Any, args: tuple, kwargs: dict) -> Any:
    namespace = (
        getattr(func, "namespace", None)
        or getattr(getattr(func, "_qualified_op_name", ""), "split", lambda _: [""])("::")[0]
    )
    if namespace in ("aten", "prim", ""):  # generic ops: `self`, `src` say nothing of K or V
        return None
    schema = getattr(func, "_schema", None)
    if schema is not None:
        return schema
    overloads = getattr(func, "overloads", None)  # an OpOverloadPacket: pick one that binds
    for name in overloads() if callable(overloads) else ():
        schema = getattr(func, name)._schema
        params = {a.name for a in schema.arguments}
        if len(args) <= len(schema.arguments) and set(kwargs) <= params:
            return schema
    return None


def frame_names(tensors: Iterable[Any], stop: frozenset[CodeType]) -> dict[int, list[str]]:
    """{id(tensor): names it is bound to}, from the frames between the impl's method (the one
    the guard called) and here: the impl's callee first, then the impl, then deeper frames."""
    frames: list[FrameType] = []
    f = sys._getframe(1)
    while f is not None and f.f_code not in stop:
        if not f.f_code.co_filename.startswith(_OWN_FILES):
            frames.append(f)
        f = f.f_back
    if f is None or not frames:  # not called under the guard: nothing is the impl's
        return {}
    # innermost first, the impl's method last: look at its callee, then at it, then deeper
    order = frames[-2:-1] + frames[-1:] + frames[-3::-1]
    wanted = {id(t): t for t in tensors}
    found: dict[int, list[str]] = {i: [] for i in wanted}
    for frame in order:
        code = frame.f_code
        params = set(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])
        local = frame.f_locals
        for name in sorted(local, key=lambda n: n not in params):
            value = local[name]
            if id(value) in wanted and value is wanted[id(value)] and name != "self":
                found[id(value)].append(name)
    return found


def best_name(names: Iterable[str]) -> str | None:
    """The first name that says K or V, else the first name at all."""
    names = [n for n in names if n]
    return next((n for n in names if role_kind(n)), names[0] if names else None)
