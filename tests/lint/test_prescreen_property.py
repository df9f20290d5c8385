"""The ast prescreen may only ever be looser than the libcst rules: hypothesis writes
functions out of receivers, aliases, splits, guards, annotations and class contexts, and
every unit where whole-module libcst collects a site must be one the prescreen keeps (and
the snippet pipeline must report what the whole-module run reports)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvguard.config import Config
from kvguard.engine import build_index, kv_names, lint_source, parse_whole_module, scan_source
from kvguard.lint.checker import collect

CONFIG = Config()
NAMES = kv_names(CONFIG)

RECEIVERS = [
    "kv_cache",
    "self.kv_cache",
    "layer.kv_cache",
    "kv_caches[i]",
    "kv_caches[0]",
    "self.kv_caches[layer_idx]",
    "paged_kv_cache",
    "kv_pages",
    "kv_buffer",
    "conv_state",
    "cache",
    "self.k_cache.kv_cache",
    "self.attn.kv_cache[0]",
]
ALIASES = [
    "{r}",
    "{r}.view(-1, 2, 16)",
    "{r}[block_ids]",
    "{r}[:, ids]",
    "{r}.select(block_axis, block)",
    "{r}.narrow(0, start, n)",
    "{r}.transpose(1, 2)",
    "{r}.index_select(1, ids)",
    "{r}[0]",
    "({r}, other)",
    "torch.zeros(2, n, 16)",
    "self.get_pair({r})",
    "torch.stack([{r}, other])",
]
SPLITS = [
    "{x}[0]",
    "{x}[1]",
    "{x}[:, 0]",
    "{x}[ids, :, 0::2, :]",
    "{x}[..., : self.head_size]",
    "{x}[:n, :, :head_dim]",
    "{x}[:, : 2 * heads]",
    "{x}[..., :kv_lora_rank]",
    "{x}.unbind(1)",
    "{x}.chunk(2, dim=1)",
    "{x}.split(self.head_size, dim=-1)",
    "{x}.select(0, 1)",
    "{x}.narrow(1, 1, 1)",
    "torch.unbind({x}, 0)",
    "torch.unbind(input={x})",
]
TARGETS = ["k", "key_cache", "conv_state", "k_pe", "kv_cache", "inner"]
WRAPS = ["{s}", "{s}.shape", "len({s})", "isinstance({s}, torch.Tensor)", "int({s})"]
GUARDS = [
    None,
    "isinstance({x}, (tuple, list))",
    "isinstance({x}, torch.Tensor)",
    "not isinstance({x}, torch.Tensor)",
    "len({x}) == 2",
    "len({x}) == 1",
    "len({x}) != 2",
    "fmt == Format.HND",
    "is_kv_second_tuple(engine_kv_format)",
    "self.use_mla",
    "x is None and isinstance({x}, tuple)",
    "{x}.shape[0] == 2",
    "self.layout == 'layer_first'",
]
GUARD_STYLES = ["if", "else", "clause", "assert", "ifexp"]
ANNOTATIONS = [
    "",
    ": torch.Tensor",
    ": tuple[torch.Tensor, torch.Tensor]",
    ": list[torch.Tensor]",
    ": list[tuple[torch.Tensor, torch.Tensor]]",
    ": Optional[Tuple[torch.Tensor, ...]]",
    ": KVPair",
]
CLASSES = [None, "class Impl(AttentionImpl):", "class MambaMixer(MambaBase):", "class MLAImpl:"]


@st.composite
def functions(draw: st.DrawFn) -> str:
    receiver = draw(st.sampled_from(RECEIVERS))
    alias = draw(st.sampled_from(ALIASES)).format(r=receiver)
    aliased = draw(st.booleans())
    x = "x" if aliased else receiver
    split = draw(st.sampled_from(SPLITS)).format(x=x)
    target = draw(st.sampled_from(TARGETS))
    statement = (
        f"{target}, other = {x}"
        if draw(st.booleans()) and split.endswith("]")
        else f"{target} = {draw(st.sampled_from(WRAPS)).format(s=split)}"
    )
    guard = draw(st.sampled_from(GUARDS))
    body = []
    if aliased:
        body.append(f"x = {alias}")
    if guard is None:
        body.append(statement)
    else:
        test = guard.format(x=x)
        style = draw(st.sampled_from(GUARD_STYLES))
        if style == "if":
            body += [f"if {test}:", f"    {statement}"]
        elif style == "else":
            body += [f"if {test}:", "    pass", "else:", f"    {statement}"]
        elif style == "clause":
            body += [f"if {test}:", "    return None", statement]
        elif style == "assert":
            body += [f"assert {test}", statement]
        else:
            body.append(f"y = ({split}) if {test} else None")
    tail = draw(st.sampled_from(["", "return", "grow", "rebind", "nested"]))
    if tail == "return":
        body.append(f"return {target}, {x}")
    elif tail == "grow":
        body.append(f"grown = torch.cat([{target}, k], dim=1)")
    elif tail == "rebind":
        body.append(f"out, {x.split('[')[0].split('.')[-1]} = block(out)")
    elif tail == "nested":
        body = ["def inner(self, kv_cache):", *(f"    {line}" for line in body), "return inner"]
    param = receiver.split("[")[0].split(".")[-1]
    annotation = draw(st.sampled_from(ANNOTATIONS))
    header = f"def {draw(st.sampled_from(['forward', 'views', 'store']))}"
    signature = f"{header}(self, {param}{annotation}, i, layer, ids, block_ids, fmt):"
    owner = draw(st.sampled_from(CLASSES))
    prelude = "import torch\nKVPair = tuple[torch.Tensor, torch.Tensor]\n"
    if owner is None:
        return prelude + signature + "\n" + "".join(f"    {line}\n" for line in body)
    return (
        prelude
        + owner
        + "\n    "
        + signature
        + "\n"
        + "".join(f"        {line}\n" for line in body)
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(functions())
def test_every_unit_libcst_reports_is_kept(text: str) -> None:
    path = "m.py"
    facts = scan_source(text, path, NAMES)
    index = build_index({path: facts}, CONFIG)
    kept = {(u.class_name, u.function) for u in facts.units}
    model = collect(parse_whole_module(text), path, NAMES, index)
    sites = {(s.class_name, s.function) for s in model.sites}
    assert sites <= kept, text
    whole = lint_source(text, path, CONFIG, index, {})
    assert lint_source(text, path, CONFIG, index, {}, facts) == whole, text
