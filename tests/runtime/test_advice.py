"""The diagnostic's "what to do" can be followed as written: a named layout only where
split_kv_cache accepts the layer's own cache and its views land in their pages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from kvguard.runtime import Guard, KVLayoutMismatchError, split_kv_cache
from kvguard.runtime.fitting import SPLITS
from kvguard.runtime.footprint import ViewGeometry
from kvguard.runtime.judge import containment
from kvguard.runtime.layouts import LAYOUTS
from kvguard.runtime.records import ViewRecord

REPO = Path(__file__).resolve().parents[2]
N, BS, H, D = 8, 4, 2, 8


class Layer:
    def __init__(self, name: str) -> None:
        self.layer_name = name


def _lands(views, page_map) -> bool:
    records = [ViewRecord(r, ViewGeometry.of(t)) for r, t in zip("KV", views, strict=True)]
    return containment(records, page_map) == []


def test_the_torch_free_table_is_the_layouts_table():
    assert {
        name: (layout.split, layout.kv_axis, layout.ndim, layout.shape_doc)
        for name, layout in LAYOUTS.items()
    } == SPLITS


def test_encoder_decoder_example_says_the_decoder_shape_must_change():
    """examples/runtime_encoder_decoder.py: the decoder is bound a K/V-first view that
    'blocks_first' cannot split, so the advice says its declared shape must change too."""
    spec = importlib.util.spec_from_file_location(
        "runtime_encoder_decoder", REPO / "examples" / "runtime_encoder_decoder.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with pytest.raises(KVLayoutMismatchError) as info:
        example.step("strict")
    violation = info.value.violation
    text = str(violation)

    assert "<" not in text.split("what to do", 1)[1]  # no placeholder
    assert (
        "layer 'decoder.0.cross_attn' splits its cache as 'blocks_first', and the cache of "
        "layer 'decoder.0.self_attn' (shape (2, 8, 4, 2, 8), layout kv_first) cannot be split "
        "that way: its backend's declared cache shape must change to 'blocks_first' "
        "(num_blocks, 2, block_size, num_kv_heads, head_size), here (8, 2, 4, 2, 8), too, "
        "then split it with kvguard.runtime.split_kv_cache(kv_cache, 'blocks_first')"
    ) in text
    raw = torch.zeros(2 * N * BS * H * D)
    with pytest.raises(ValueError):  # what the old advice said, on the decoder's own view
        split_kv_cache(raw.view(2, N, BS, H, D), "blocks_first")
    # the advice, followed: the shape it names, split as it says, lands on the page map
    assert _lands(split_kv_cache(raw.view(8, 2, 4, 2, 8), "blocks_first"), violation.page_map)


def _declared_violation(bound_shape: tuple[int, ...]):
    """(violation, bound cache): one layer reading its cache as (2, N, ...) K/V-first,
    against the blocks-first pages its engine declared."""

    class KVFirstReader:
        def forward(self, layer, kv_cache):
            k, v = kv_cache.view(2, N, -1).unbind(0)
            return k.sum() + v.sum()

    guard = Guard("strict")
    guard.wrap(KVFirstReader)
    raw = torch.zeros(N * 2 * BS * H * D)
    page = 2 * BS * H * D * raw.element_size()
    guard.declare_allocation(raw, page_bytes=page, block_stride=page, num_blocks=N)
    bound = raw.view(bound_shape)
    with pytest.raises(KVLayoutMismatchError) as info:
        KVFirstReader().forward(Layer("l.0"), bound)
    return info.value.violation, bound


def test_a_cache_a_named_layout_fits_is_told_that_layout():
    """No other layer to copy: the advice names the layout whose split of the layer's own
    (blocks-first) cache lands, and following it does."""
    violation, bound = _declared_violation((N, 2, BS, H, D))

    assert (
        "split the cache of layer 'l.0' with kvguard.runtime.split_kv_cache(kv_cache, "
        "'blocks_first') (or 'blocks_first_hnd': the same cut of these bytes);"
    ) in str(violation)
    assert _lands(split_kv_cache(bound, "blocks_first"), violation.page_map)


def test_a_cache_no_named_layout_fits_points_at_the_declared_shape():
    violation, _ = _declared_violation((N, 2 * BS * H * D))

    assert (
        "no named layout splits the cache of layer 'l.0' (shape (8, 128), layout unnamed) "
        "onto this page map: its backend's declared cache shape must change to one that does "
        "(kvguard.runtime.describe_kv_cache(kv_cache) shows the axes the engine declared for it)"
    ) in str(violation)
