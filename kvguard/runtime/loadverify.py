"""Stored fingerprints by content key, and the check of loaded blocks against them.

An engine adapter calls `store(...)` with the blocks whose content became final (keyed by
what the engine says they hold: a hash of the tokens up to the end of the block), and
`check(...)` with the blocks a request starts from; `settle()` then waits for the device once
and returns the mismatches as `LoadMismatch` records. Keys are the engine's, never a
connector's: the guard does not trust the party it checks to name the content.

The first fingerprint stored for a key is kept: a correct load restores the bytes some
request computed, and a recomputation of the same tokens differs by rounding only (within
`tolerance(dtype)`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from .blockprints import diagnose, errors, fingerprint, tolerance, verdicts
from .load_records import LoadMismatch

DEFAULT_MAX_PRINTS = 1 << 20  # (layer, key) entries; 4*T*H floats each


@dataclass
class _Pending:
    layer: str
    request: str
    connector: str
    cache: str
    block_size: int
    block_ids: list[int]
    indices: list[int]
    chain: dict[int, Hashable]  # index in the request -> key, every full block known
    errors: torch.Tensor  # (n, 2) on the device
    loaded: torch.Tensor  # (n, 4, T, H) on the device
    tol: float


class LoadVerifier:
    def __init__(self, max_prints: int = DEFAULT_MAX_PRINTS) -> None:
        self.max_prints = max_prints
        self._prints: OrderedDict[tuple[str, Hashable], torch.Tensor] = OrderedDict()
        self._pending: list[_Pending] = []
        self.stored = 0  # blocks fingerprinted
        self.verified = 0  # loaded blocks compared with a stored fingerprint
        self.unverified = 0  # loaded blocks whose tokens were never stored here
        self.mismatches: list[LoadMismatch] = []

    def has(self, layer: str, key: Hashable) -> bool:
        return (layer, key) in self._prints

    def store(
        self,
        layer: str,
        key_plane: torch.Tensor,
        value_plane: torch.Tensor,
        block_ids: Sequence[int],
        keys: Sequence[Hashable],
    ) -> None:
        """Fingerprint `block_ids` of one layer (K and V views (blocks, tokens, heads, D)),
        each under its content key; keys already stored are left as they are."""
        new = [(b, k) for b, k in zip(block_ids, keys, strict=True) if not self.has(layer, k)]
        if not new:
            return
        ids = torch.tensor([b for b, _ in new], device=key_plane.device)
        prints = fingerprint(key_plane, value_plane, ids)
        for i, (_, k) in enumerate(new):
            self._prints[(layer, k)] = prints[i]
        self.stored += len(new)
        while len(self._prints) > self.max_prints:
            self._prints.popitem(last=False)

    def check(
        self,
        layer: str,
        request: str,
        key_plane: torch.Tensor,
        value_plane: torch.Tensor,
        block_ids: Sequence[int],
        chain: Sequence[Hashable],
        *,
        connector: str = "",
        cache: str = "",
    ) -> None:
        """Queue the comparison of a request's first blocks (block_ids[j] holds the tokens
        of chain[j]) with what was stored for those tokens; `settle()` decides."""
        known = [j for j in range(min(len(block_ids), len(chain))) if self.has(layer, chain[j])]
        self.unverified += min(len(block_ids), len(chain)) - len(known)
        if not known:
            return
        ids = torch.tensor([block_ids[j] for j in known], device=key_plane.device)
        loaded = fingerprint(key_plane, value_plane, ids)
        stored = torch.stack([self._prints[(layer, chain[j])] for j in known])
        self._pending.append(
            _Pending(
                layer=layer,
                request=request,
                connector=connector,
                cache=cache,
                block_size=key_plane.shape[1],
                block_ids=[block_ids[j] for j in known],
                indices=known,
                chain=dict(enumerate(chain)),
                errors=errors(stored, loaded),
                loaded=loaded,
                tol=tolerance(key_plane.dtype),
            )
        )
        self.verified += len(known)

    def settle(self) -> list[LoadMismatch]:
        """Wait for the queued comparisons (one transfer of all their errors) and return the
        new mismatches, one per (layer, request)."""
        pending, self._pending = self._pending, []
        if not pending:
            return []
        flat = torch.cat([p.errors for p in pending]).tolist()
        found, at = [], 0
        for p in pending:
            errs, at = flat[at : at + len(p.indices)], at + len(p.indices)
            bad = verdicts(p.block_ids, p.indices, errs, p.tol)
            if bad:
                found.append(self._explain(p, bad))
        self.mismatches.extend(found)
        return found

    def _explain(self, p: _Pending, bad) -> LoadMismatch:
        stored = {
            j: self._prints[(p.layer, k)].cpu() for j, k in p.chain.items() if self.has(p.layer, k)
        }
        loaded = {j: p.loaded[i].cpu() for i, j in enumerate(p.indices)}
        kind, shift, notes = diagnose(stored, loaded, [b.index for b in bad], p.tol)
        return LoadMismatch(
            layer=p.layer,
            request=p.request,
            connector=p.connector,
            kind=kind,
            shift=shift,
            blocks=tuple(bad),
            checked_blocks=len(p.indices),
            block_size=p.block_size,
            cache=p.cache,
            notes=tuple(notes),
        )

    def counts(self) -> dict[str, int]:
        return {
            "stored_blocks": self.stored,
            "verified_blocks": self.verified,
            "unverified_blocks": self.unverified,
            "mismatches": len(self.mismatches),
        }
