"""declare_allocation refuses a page map that reaches past its buffer, with the numbers."""

from __future__ import annotations

import pytest
import torch

from kvguard.runtime import Guard

PAGE = 256
BUF = torch.zeros(4096 // 4)  # 4096 bytes of float32


def test_too_many_blocks_names_the_blocks_the_bytes_and_what_fits():
    with pytest.raises(ValueError) as info:
        Guard("strict").declare_allocation(
            BUF,
            page_bytes=PAGE,
            block_stride=PAGE,
            layer_stride=2048,
            layers=["l.0", "l.1"],
            num_blocks=800,
        )
    message = str(info.value)
    assert "800 blocks x 256 B (block_stride) exceed the 4096-byte allocation" in message
    # layer l.1 starts at byte 2048: its 800th page ends at 2048 + 799*256 + 256
    assert "reach byte 206848" in message
    assert "8 blocks fit" in message


def test_one_layer_too_many_blocks():
    with pytest.raises(ValueError, match=r"17 blocks x 256 B .* 4096-byte .* 16 blocks fit"):
        Guard("warn").declare_allocation(BUF, page_bytes=PAGE, block_stride=PAGE, num_blocks=17)


def test_layer_stride_times_layers_past_the_end():
    with pytest.raises(ValueError) as info:
        Guard("strict").declare_allocation(
            BUF, page_bytes=PAGE, block_stride=PAGE, layer_stride=2048, layers=["a", "b", "c"]
        )
    message = str(info.value)
    assert "3 layers x layer_stride 2048 B from offset 0" in message
    assert "reach byte 4352, past the 4096-byte allocation" in message


@pytest.mark.parametrize("num_blocks", [8, None])
def test_a_map_that_fills_the_buffer_exactly_is_accepted(num_blocks):
    guard = Guard("strict")
    guard.declare_allocation(
        BUF,
        page_bytes=PAGE,
        block_stride=PAGE,
        layer_stride=2048,
        layers=["l.0", "l.1"],
        num_blocks=num_blocks,
    )
    (alloc,) = guard.report()["allocations"]
    assert sorted(alloc["declared"]) == ["l.0", "l.1"]
