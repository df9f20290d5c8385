"""What is this value? The rules' answer, from what the code in front of them says.

A split is only a K/V split if its receiver is *one tensor that holds both K and V*. Names
(``kv_cache``) say that a value is some KV cache; the code around it often says which kind:

===============  =====================================================  ==================
kind             what it is                                             splitting it
===============  =====================================================  ==================
``CACHE``        one tensor with a K/V axis (a paged cache, a view or   a K/V split
                 a block selection of one); also what an unknown
                 cache-named value is taken to be (recall first)
``PAIR``         a Python tuple/list of separate tensors (K, V, ...)    picks a tensor
``LIST``         a per-layer (per-engine, per-group) container; its     picks an element
                 ``element`` kind says what indexing it gives
``STATE``        a tuple of recurrent states (Mamba, linear attention)  picks a state
``LATENT``       an MLA latent, or a buffer that holds only K or only   no V to split off
                 V
``LOCAL``        a tensor built in this function with a shape written   nothing shared
                 out at the allocation (``torch.zeros(2, n, 16)``,
                 ``torch.stack([k, v])``)
===============  =====================================================  ==================

The evidence, strongest first (the first that speaks decides; none at all leaves the
name's verdict, ``CACHE`` for a cache name):

1. *Guards and bindings, where they hold* (``flow.walk_with_facts``): ``isinstance(x, (tuple,
   list))`` or ``not isinstance(x, torch.Tensor)`` make ``x`` a ``PAIR`` inside the branch,
   after a guard clause (``if ...: return``/``raise``/``continue``), after an ``assert`` and
   right of an ``and``; ``isinstance(x, torch.Tensor)`` makes it a ``CACHE`` again (explicit
   evidence that it is a tensor); ``len(x) == 2`` a ``PAIR``; ``len(x) == 1`` a one-element
   ``LIST`` (``x[0]`` unwraps it). An assignment says what a name is in the statements after
   it (a construction site, below, or an element of what a call returned). A branch on an
   MLA switch (a test naming ``mla``) holds ``LATENT`` caches. A branch (or the code after
   a guard clause) on a detected layout (a test that compares or predicates a value named
   for a ``format``/``fmt``/``layout``, or checks ``x.shape[d] == 2``), and code after a
   ``validate..format/layout`` call, has *checked* the layout: its splits assume nothing
   (``Facts.checked``).
2. *Annotations* of parameters and annotated assignments: ``tuple[...]``, ``list[...]``,
   ``Sequence[...]`` (``typing`` spellings too, and module-level aliases of them anywhere in
   the project) make a cache-named value a ``PAIR`` (a cache-list name: a ``LIST`` of
   ``PAIR``s when its element is such a type); ``torch.Tensor`` makes it a ``CACHE``. A
   union that admits a tensor says nothing. A parameter that an annotated caller passes a
   sequence to is a ``PAIR`` (``value_facts``).
3. *Construction sites* in the same function, when every binding of a local agrees: a tuple
   or list display of two or more items, or ``tuple(...)``/``list(...)``, is a ``PAIR``; an
   allocation whose shape is written out at the call, or a ``stack``/``cat`` of pieces, is
   ``LOCAL``; a call of a function whose return annotation is a tuple (in this file or, via
   the project index, another) is a ``PAIR``; a cache that a call hands back beside its
   output (``x, kv_cache = block(x)``) is the model's own (``LOCAL``); a call that says it
   returns the key or the value alone (``get_key_buffer``) is ``LATENT``.
4. *Project bindings* (``value_facts``): a cache-list container that the project only ever
   fills with tuple displays holds ``PAIR``s; a cache attribute that it only ever binds to
   lists (``layer.kv_cache = [kv_cache]``) is a per-engine ``LIST``.
5. *Names*: ``kv-cache-names`` are ``CACHE``, ``kv-cache-list-names`` a ``LIST`` of
   ``CACHE``; the class and path context decide ``STATE`` and ``LATENT`` (``forms``), and so
   does a holder on the way to the cache that is named for one side (``self.k_cache.kv_cache``).

``checker`` adds what is about the pieces rather than the receiver: pieces bound to latent
names, pieces only inspected (``inner.shape``), pieces grown with ``torch.cat`` (a model's
own cache), and splitters that memoise their views or sit inside another function.

Nothing here knows any project's names: only Python's and torch's spellings, and the
English words that say "format", "layout", "MLA", "key" and "value".
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import libcst as cst

from kvguard.lint.value_facts import SEQUENCE_TYPES, TENSOR_TYPES, Kind
from kvguard.lint.walk import walk

# Calls that allocate a fresh tensor from a shape given as arguments.
ALLOCATIONS = frozenset(
    {"zeros", "empty", "ones", "full", "rand", "randn", "randint", "arange", "tensor"}
)
# Calls that build a tensor out of pieces the function already holds.
ASSEMBLIES = frozenset({"stack", "cat", "concat", "concatenate"})
# Words of a test that checks which layout the cache has.
LAYOUT_WORDS = ("format", "fmt", "layout")


@dataclass(frozen=True)
class Facts:
    """What guards established at one point of a function: expression key -> kind."""

    kinds: tuple[tuple[str, Kind | None], ...] = ()  # None: a rebinding; nothing known
    checked: bool = False  # the layout was detected or validated before this point
    latent: bool = False  # inside an MLA branch

    def get(self, key: str | None) -> Kind | None:
        if key is None:
            return None
        for name, kind in reversed(self.kinds):
            if name == key:
                return kind
        return None

    def add(self, other: Facts) -> Facts:
        if not (other.kinds or other.checked or other.latent):
            return self
        return Facts(
            self.kinds + other.kinds, self.checked or other.checked, self.latent or other.latent
        )


NO_FACTS = Facts()


def key(expr: cst.BaseExpression) -> str | None:
    """A name for an expression that guards and splits can share: ``x``, ``self.x``,
    ``x[0]``, ``x[i]`` (an index that is a name or a literal), or None."""
    if isinstance(expr, cst.Name):
        return expr.value
    if isinstance(expr, cst.Attribute):
        inner = key(expr.value)
        return None if inner is None else f"{inner}.{expr.attr.value}"
    if isinstance(expr, cst.Subscript) and len(expr.slice) == 1:
        element = expr.slice[0].slice
        inner = key(expr.value)
        if inner is None or not isinstance(element, cst.Index):
            return None
        index = element.value
        if isinstance(index, cst.Integer):
            return f"{inner}[{index.value}]"
        if isinstance(index, cst.Name):
            return f"{inner}[{index.value}]"
    return None


def _dotted(node: cst.BaseExpression) -> str:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        return f"{_dotted(node.value)}.{node.attr.value}"
    return ""


def _words(node: cst.CSTNode) -> list[str]:
    """The identifiers a test spells (names and attribute names)."""
    return [
        n.value if isinstance(n, cst.Name) else n.attr.value
        for n in walk(node)
        if isinstance(n, (cst.Name, cst.Attribute))
    ]


# -- annotations ------------------------------------------------------------------------


def type_kind(annotation: cst.BaseExpression, aliases: dict[str, Kind]) -> Kind | None:
    """PAIR for a sequence type, CACHE for a tensor type, None when it says neither (or
    admits both: ``Tensor | tuple[...]``). ``Optional``/``None`` parts are ignored."""
    if isinstance(annotation, cst.SimpleString):  # "tuple[torch.Tensor, torch.Tensor]"
        try:
            annotation = cst.parse_expression(annotation.evaluated_value)  # type: ignore[arg-type]
        except (cst.ParserSyntaxError, TypeError):
            return None
    parts = _union_parts(annotation)
    kinds = set()
    for part in parts:
        head = part.value if isinstance(part, cst.Subscript) else part
        dotted = _dotted(head)
        tail = dotted.rsplit(".", 1)[-1]
        if dotted in ("None", "Optional") or tail == "Any":
            if tail == "Any":
                return None
            continue
        if dotted in aliases:
            kinds.add(aliases[dotted])
        elif tail in SEQUENCE_TYPES:
            kinds.add(Kind.PAIR)
        elif tail in TENSOR_TYPES:
            kinds.add(Kind.CACHE)
        else:
            return None
    return kinds.pop() if len(kinds) == 1 else None


def element_type(annotation: cst.BaseExpression) -> cst.BaseExpression | None:
    """``list[tuple[...]]`` -> ``tuple[...]``; ``dict[str, X]`` -> ``X``."""
    parts = [p for p in _union_parts(annotation) if _dotted(p) != "None"]
    if len(parts) != 1 or not isinstance(parts[0], cst.Subscript):
        return None
    sub = parts[0]
    head = _dotted(sub.value).rsplit(".", 1)[-1]
    elements = [e.slice for e in sub.slice]
    if not elements or not all(isinstance(e, cst.Index) for e in elements):
        return None
    if head in SEQUENCE_TYPES and len(elements) <= 2:
        return elements[0].value  # type: ignore[union-attr]
    if head in ("dict", "Dict", "Mapping", "MutableMapping") and len(elements) == 2:
        return elements[1].value  # type: ignore[union-attr]
    return None


def _union_parts(annotation: cst.BaseExpression) -> list[cst.BaseExpression]:
    if isinstance(annotation, cst.BinaryOperation) and isinstance(annotation.operator, cst.BitOr):
        return [*_union_parts(annotation.left), *_union_parts(annotation.right)]
    if isinstance(annotation, cst.Subscript):
        head = _dotted(annotation.value).rsplit(".", 1)[-1]
        if head in ("Optional", "Union"):
            return [
                part
                for e in annotation.slice
                if isinstance(e.slice, cst.Index)
                for part in _union_parts(e.slice.value)
            ]
    return [annotation]


# -- guards -----------------------------------------------------------------------------


def _isinstance_kind(types: cst.BaseExpression, aliases: dict[str, Kind]) -> Kind | None:
    names = (
        [e.value for e in types.elements] if isinstance(types, (cst.Tuple, cst.List)) else [types]
    )
    kinds = {type_kind(n, aliases) for n in names}
    return kinds.pop() if len(kinds) == 1 else None


def _len_of(node: cst.BaseExpression) -> cst.BaseExpression | None:
    if (
        isinstance(node, cst.Call)
        and isinstance(node.func, cst.Name)
        and node.func.value == "len"
        and len(node.args) == 1
    ):
        return node.args[0].value
    return None


def guard_facts(test: cst.BaseExpression, aliases: dict[str, Kind]) -> tuple[Facts, Facts]:
    """(what holds where ``test`` is true, what holds where it is false)."""
    if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        when_true, when_false = guard_facts(test.expression, aliases)
        return when_false, when_true
    if isinstance(test, cst.BooleanOperation):
        left_true, left_false = guard_facts(test.left, aliases)
        right_true, right_false = guard_facts(test.right, aliases)
        if isinstance(test.operator, cst.And):
            return left_true.add(right_true), _checked_only(left_false, right_false)
        return _checked_only(left_true, right_true), left_false.add(right_false)
    true, false = _simple_guard(test, aliases)
    checked, latent = _branch_words(test)
    if checked or latent:
        true = true.add(Facts(checked=checked, latent=latent))
        false = false.add(Facts(checked=checked))
    return true, false


def _branch_words(test: cst.BaseExpression) -> tuple[bool, bool]:
    """(the test tells layouts apart, the test is an MLA switch).

    A layout test compares or predicates a value named for a format or layout
    (``fmt == ...``, ``is_kv_second_tuple(fmt)``, ``format_spec.is_hnd``); whether one is
    set at all (``x is None``) tells no layout apart."""
    if isinstance(test, cst.Comparison) and all(
        isinstance(c.operator, (cst.Is, cst.IsNot)) and _dotted(c.comparator) == "None"
        for c in test.comparisons
    ):
        return False, False
    if _checks_pair_dim(test):
        return True, False
    words = [w.lower() for w in _words(test)]
    layout = any(w in word for word in words for w in LAYOUT_WORDS)
    if layout and not isinstance(test, (cst.Comparison, cst.Call, cst.Attribute)):
        layout = False  # a bare name: truthiness, not a comparison
    return layout, any("mla" in word for word in words)


def _checks_pair_dim(test: cst.BaseExpression) -> bool:
    """``x.shape[0] == 2``, ``x.size(1) == 2``: the test found which dim holds K and V."""
    if not (
        isinstance(test, cst.Comparison)
        and len(test.comparisons) == 1
        and isinstance(test.comparisons[0].operator, cst.Equal)
    ):
        return False
    sides = (test.left, test.comparisons[0].comparator)
    if not any(isinstance(side, cst.Integer) and side.value == "2" for side in sides):
        return False
    return any(
        (isinstance(side, cst.Subscript) and _dotted(side.value).endswith(".shape"))
        or (isinstance(side, cst.Call) and _dotted(side.func).endswith(".size") and side.args)
        for side in sides
    )


def is_one_side(word: str) -> bool:
    """``k_cache``, ``key_buffer``, ``v_pool``: a holder of the key or the value alone."""
    parts = set(word.lower().strip("_").split("_"))
    key, value = parts & {"k", "key", "keys"}, parts & {"v", "value", "values"}
    return bool(key) != bool(value) and bool(parts & {"cache", "buffer", "pool", "pages"})


def kinds_only(facts: Facts) -> Facts:
    """A branch's layout or MLA test covers that branch, not the code after it."""
    return Facts(facts.kinds) if facts.kinds else NO_FACTS


def _checked_only(a: Facts, b: Facts) -> Facts:
    return Facts(checked=a.checked or b.checked)


def _simple_guard(test: cst.BaseExpression, aliases: dict[str, Kind]) -> tuple[Facts, Facts]:
    if (
        isinstance(test, cst.Call)
        and isinstance(test.func, cst.Name)
        and test.func.value == "isinstance"
        and len(test.args) == 2
    ):
        name = key(test.args[0].value)
        kind = _isinstance_kind(test.args[1].value, aliases)
        if name is None or kind is None:
            return NO_FACTS, NO_FACTS
        other = Kind.PAIR if kind is Kind.CACHE else None
        return Facts(((name, kind),)), Facts(((name, other),)) if other else NO_FACTS
    if isinstance(test, cst.Comparison) and len(test.comparisons) == 1:
        target = test.comparisons[0]
        sized = _len_of(test.left)
        count = target.comparator
        if sized is None:
            sized, count = _len_of(target.comparator), test.left
        name = key(sized) if sized is not None else None
        if name is None or not isinstance(count, cst.Integer):
            return NO_FACTS, NO_FACTS
        kind = {1: Kind.LIST, 2: Kind.PAIR}.get(int(count.value, 0))
        if kind is None:
            return NO_FACTS, NO_FACTS
        fact = Facts(((name, kind),))
        if isinstance(target.operator, cst.Equal):
            return fact, NO_FACTS
        if isinstance(target.operator, cst.NotEqual):
            return NO_FACTS, fact
    return NO_FACTS, NO_FACTS


def validates_layout(call: cst.Call) -> bool:
    """``self._validate_kv_format()``, ``check_layout(x)``: the layout is checked after it."""
    name = (
        call.func.attr.value
        if isinstance(call.func, cst.Attribute)
        else call.func.value
        if isinstance(call.func, cst.Name)
        else ""
    ).lower()
    return any(w in name for w in ("validate", "check", "assert")) and any(
        w in name for w in LAYOUT_WORDS
    )


# -- construction sites -----------------------------------------------------------------


def construction_kind(value: cst.BaseExpression, returns: frozenset[str]) -> Kind | None:
    """What an assigned value is, when the expression itself says so."""
    if isinstance(value, (cst.Tuple, cst.List)):
        return Kind.PAIR if len(value.elements) >= 2 else None
    if not isinstance(value, cst.Call):
        return None
    dotted = _dotted(value.func)
    tail = dotted.rsplit(".", 1)[-1]
    if dotted in ("tuple", "list"):
        return Kind.PAIR
    if tail in returns:
        return Kind.PAIR
    owner = dotted.rsplit(".", 1)[0] if "." in dotted else ""
    if owner in ("torch", "jnp", "np", "numpy", "jax.numpy") or owner.endswith(".torch"):
        if tail in ASSEMBLIES:
            return Kind.LOCAL
        if tail in ALLOCATIONS and _shape_written_out(value, tail):
            return Kind.LOCAL
    return Kind.LATENT if _gets_one_side(tail.lower()) else None


def _gets_one_side(callee: str) -> bool:
    """``get_key_buffer``, ``value_cache_of``: a call that hands out K or V alone."""
    one_side = ("key" in callee) != ("value" in callee) and "kv" not in callee
    return one_side and any(w in callee for w in ("buffer", "cache"))


def _shape_written_out(call: cst.Call, function: str) -> bool:
    """The shape is written out at the call (``zeros(2, n, 16)``, ``empty((2, n))``), not a
    shape that comes from elsewhere (``zeros(kv_cache_shape)``)."""
    positional = [a.value for a in call.args if a.keyword is None and not a.star]
    sized = {a.keyword.value: a.value for a in call.args if a.keyword is not None}
    if function == "randint":  # randint(low, high, size)
        shape = positional[2] if len(positional) > 2 else sized.get("size")
        return isinstance(shape, (cst.Tuple, cst.List))
    if function in ("full", "tensor", "arange"):
        shape = positional[0] if positional else None
        return isinstance(shape, (cst.Tuple, cst.List)) or function == "arange"
    if not positional:
        return isinstance(sized.get("size"), (cst.Tuple, cst.List))
    first = positional[0]
    if isinstance(first, (cst.Tuple, cst.List)):
        return bool(first.elements)
    return isinstance(first, cst.Integer) or len(positional) > 1


# -- latents ----------------------------------------------------------------------------

# Name parts that say a piece is an MLA latent or its rotary part, not K or V.
LATENT_PARTS = frozenset({"latent", "lora", "rope", "nope", "pe"})


def is_latent_name(name: str) -> bool:
    """``k_pe``, ``k_rope``, ``kv_c_normed``, ``c_kv``, ``latent``: MLA pieces."""
    parts = name.lower().strip("_").split("_")
    if LATENT_PARTS.intersection(parts):
        return True
    pairs = set(itertools.pairwise(parts))
    return ("kv", "c") in pairs or ("c", "kv") in pairs


def mentions_latent(node: cst.CSTNode) -> bool:
    """A slice bound or split size spelled in latent terms (``kv_lora_rank``, ``rope_dim``):
    it cuts an MLA latent from its rotary part, never K from V."""
    if isinstance(node, cst.Subscript):
        parts: list[cst.CSTNode] = [e.slice for e in node.slice]
    elif isinstance(node, cst.Call):
        parts = [a.value for a in node.args]
    else:
        return False
    for part in parts:
        for sub in walk(part):
            if isinstance(sub, (cst.Name, cst.Attribute)):
                word = sub.value if isinstance(sub, cst.Name) else sub.attr.value
                if is_latent_name(word):
                    return True
    return False
