"""Fingerprints of the K/V content of cache blocks, and what a mismatch between a stored and a
loaded block says (torch only; the vLLM hooks are in `kvguard/vllm/connector.py`).

The invariant: a block that a connector loads for some tokens holds the K and V this engine
computed for those same tokens. A block's fingerprint is four small reductions per token and
head, over the content axis of K and of V as the cache's description gives them (never read
off the shape): the sum of K, the sum of V, and their sums of magnitudes. One block of
`T` tokens and `H` heads keeps `4 * T * H` floats, not its `2 * T * H * D` elements, so
nothing of the cache is copied; the reductions run on the cache's device, queued on its
stream, and only `errors(...).tolist()` (the verify step itself) waits for them.

A mismatch is then explained by the transformation that maps the loaded fingerprints onto
the stored ones: K and V swapped, tokens and heads transposed, heads reordered, shifted by
whole blocks or by tokens, zeros, or none of these ("different").
"""

from __future__ import annotations

import torch

from .load_records import BlockVerdict

_SUM_K, _SUM_V, _ABS_K, _ABS_V = range(4)
_FLOOR = 1e-12


def tolerance(dtype: torch.dtype) -> float:
    """The relative difference a recomputation of the same tokens may show: a few rounding
    steps of the cache's dtype. A faithful copy shows 0; wrong bytes show ~1/sqrt(D)."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 1.0 / 256
    return max(8 * eps, 1e-5)


def fingerprint(key: torch.Tensor, value: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """(n, 4, T, H) float32 of the blocks `block_ids`, from K and V views shaped (blocks,
    tokens, heads, head_size) (`KVCacheDescription.split`). Only the selected blocks are
    read; nothing waits for the device."""
    k = key.index_select(0, block_ids)
    v = value.index_select(0, block_ids)
    if not k.dtype.is_floating_point or k.element_size() == 1:  # fp8 / integer caches
        k, v = k.float(), v.float()
    f32 = torch.float32
    return torch.stack(
        [
            k.sum(-1, dtype=f32),
            v.sum(-1, dtype=f32),
            torch.linalg.vector_norm(k, 1, dim=-1, dtype=f32),
            torch.linalg.vector_norm(v, 1, dim=-1, dtype=f32),
        ],
        dim=1,
    )


def errors(stored: torch.Tensor, loaded: torch.Tensor) -> torch.Tensor:
    """(n, 2): per block, the largest relative difference of K and of V (on the device)."""
    scale = torch.maximum(stored[:, 2:], loaded[:, 2:]).clamp_min(_FLOOR)
    signed = (loaded[:, :2] - stored[:, :2]).abs() / scale
    magnitude = (loaded[:, 2:] - stored[:, 2:]).abs() / scale
    return torch.maximum(signed, magnitude).amax(dim=(2, 3))


def _err(stored: torch.Tensor, loaded: torch.Tensor) -> float:
    """One number for one block's (4, T, H) fingerprints."""
    return float(errors(stored[None], loaded[None]).max())


def _swap_kv(x: torch.Tensor) -> torch.Tensor:
    return x[[_SUM_V, _SUM_K, _ABS_V, _ABS_K]]


def _transposes(x: torch.Tensor) -> list[torch.Tensor]:
    """The (4, T, H) fingerprints a block would show had its (T, H) cells been written with
    the token and head axes exchanged, in either direction."""
    _, t, h = x.shape
    return [x.reshape(4, h, t).transpose(1, 2), x.transpose(1, 2).reshape(4, t, h)]


def _head_order(stored: torch.Tensor, loaded: torch.Tensor, tol: float) -> list[int] | None:
    """A permutation p with loaded[..., p] == stored, if the heads were merely reordered."""
    heads = stored.shape[2]
    free, order = set(range(heads)), []
    for h in range(heads):
        match = next(
            (
                g
                for g in sorted(free)
                if _err(stored[:, :, h : h + 1], loaded[:, :, g : g + 1]) <= tol
            ),
            None,
        )
        if match is None:
            return None
        free.discard(match)
        order.append(match)
    return order


def diagnose(
    stored: dict[int, torch.Tensor],
    loaded: dict[int, torch.Tensor],
    bad: list[int],
    tol: float,
) -> tuple[str, int, list[str]]:
    """(kind, shift, notes) for the blocks `bad` of one request and layer.

    `stored` maps a block's index in the request to what was stored for its tokens, `loaded`
    to what the load left there (CPU (4, T, H) tensors); `bad` are the indices that differ.
    """
    if all(float(loaded[j][2:].abs().max()) == 0.0 for j in bad):
        return "zeros", 0, []
    if all(_err(stored[j], _swap_kv(loaded[j])) <= tol for j in bad):
        return "swapped", 0, []
    _, t, h = loaded[bad[0]].shape
    if t > 1 and h > 1:
        for k in range(2):
            if all(_err(stored[j], _transposes(loaded[j])[k]) <= tol for j in bad):
                return "transposed", 0, []
        orders = [_head_order(stored[j], loaded[j], tol) for j in bad]
        if all(o is not None for o in orders):
            return "heads_reordered", 0, [f"head order found in the first block: {orders[0]}"]
    shift = _token_shift(stored, loaded, bad, tol)
    if shift is not None:
        if shift % t == 0:
            return "shifted_blocks", shift // t, []
        return "shifted_tokens", shift, []
    return "different", 0, _difference_notes(stored, loaded, bad, tol)


def _token_shift(
    stored: dict[int, torch.Tensor], loaded: dict[int, torch.Tensor], bad: list[int], tol: float
) -> int | None:
    """The s != 0 such that each bad block j holds the stored tokens [j*T + s, j*T + s + T) of
    the request's prefix, over the stretch of consecutive stored blocks from index 0."""
    n = 0
    while n in stored:
        n += 1
    if n == 0:
        return None
    t = stored[0].shape[1]
    flat = torch.cat([stored[i] for i in range(n)], dim=1)  # (4, n*T, H)
    span = n * t
    for s in sorted(range(-span + 1, span), key=abs):
        if s == 0:
            continue
        seen = False
        for j in bad:
            start = j * t + s
            if start < 0 or start + t > span:
                continue
            if _err(flat[:, start : start + t], loaded[j]) > tol:
                break
            seen = True
        else:
            if seen:
                return s
    return None


def _difference_notes(
    stored: dict[int, torch.Tensor], loaded: dict[int, torch.Tensor], bad: list[int], tol: float
) -> list[str]:
    notes = []
    k_ok = all(_err(stored[j][[0, 0, 2, 2]], loaded[j][[0, 0, 2, 2]]) <= tol for j in bad)
    v_ok = all(_err(stored[j][[1, 1, 3, 3]], loaded[j][[1, 1, 3, 3]]) <= tol for j in bad)
    if k_ok:
        notes.append("K matches everywhere: only V differs")
    elif v_ok:
        notes.append("V matches everywhere: only K differs")
    first = bad[0]
    per_token = errors(
        stored[first].transpose(0, 1)[..., None], loaded[first].transpose(0, 1)[..., None]
    )
    wrong = [int(i) for i in torch.nonzero(per_token.amax(dim=1) > tol).flatten()]
    if wrong:
        t = stored[first].shape[1]
        notes.append(
            f"in block #{first}, {len(wrong)} of {t} tokens differ (first: token {wrong[0]})"
        )
    return notes


def verdicts(
    block_ids: list[int], indices: list[int], errs: list[list[float]], tol: float
) -> list[BlockVerdict]:
    """The blocks whose K or V error is over `tol`, as records."""
    return [
        BlockVerdict(b, j, e[0], e[1])
        for b, j, e in zip(block_ids, indices, errs, strict=True)
        if max(e) > tol
    ]
