"""The runs of bytes that one block's page occupies, read off the per-layer view vLLM binds.

vLLM's `KVCacheTensor` says where layer l's page for block b starts (`offset + l*layer_stride
+ b*block_stride`). On block-compact layouts the page is one run of bytes. On head-outer
layouts (KVCacheLayout.LHBNC: heads outside blocks; BHLNC: heads outside layers) it is one run
per head slot, and `block_stride` is the stride between one head's runs. Declaring such a page
as one run makes the guard disown every head but the first, so the page must be declared as
`planes`: `Guard.declare_allocation(..., page_bytes=run, planes=planes)`.

The bound view already carries the answer (block axis first, the other dims in any physical
order), so this needs no vLLM API: sort the per-block dims by stride, merge the contiguous
innermost ones into the run, and enumerate the rest as plane offsets.
"""

from __future__ import annotations

import itertools

import torch


def page_runs(bound: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    """(run_bytes, planes) of one block's page in `bound`, a layer's cache view (block first).

    planes are byte offsets from the start of the block's first run, increasing, first 0.
    """
    item = bound.element_size()
    dims = sorted(
        (stride * item, size)
        for size, stride in zip(bound.shape[1:], bound.stride()[1:], strict=True)
        if size > 1
    )
    run, outer = item, []
    for stride, size in dims:
        if not outer and stride == run:
            run *= size
        else:
            outer.append((stride, size))
    planes = {
        sum(i * stride for i, (stride, _) in zip(index, outer, strict=True))
        for index in itertools.product(*(range(size) for _, size in outer))
    }
    return run, tuple(sorted(planes))
