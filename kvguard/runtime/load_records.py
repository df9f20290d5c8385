"""What the connector guard found, as data: a load whose blocks do not hold what the engine
stored for those tokens. Like `records.py`, a mismatch keeps what was compared and explains
itself when read (`str(m)` the full diagnosis, `m.summary()` one line), and round-trips
through JSON so that `kvguard report` renders it without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# What a load's blocks hold, against what was stored for the same tokens.
KINDS = {
    "swapped": "K and V swapped",
    "transposed": "tokens and heads transposed",
    "heads_reordered": "the heads in another order",
    "shifted_blocks": "the content of other blocks of the same prefix (shifted by {n} blocks)",
    "shifted_tokens": "the content shifted by {n} tokens",
    "zeros": "zeros (nothing was written into them)",
    "different": "different K/V content",
}
ADVICE = {
    "swapped": "the connector reads K where V is: take K and V from "
    "kvguard.runtime.describe_kv_cache(kv_layer), not from the shape",
    "transposed": "the connector reads the token axis as the head axis: take the axes from "
    "kvguard.runtime.describe_kv_cache(kv_layer), not from the shape",
    "heads_reordered": "the connector orders the heads differently on store and load",
    "shifted_blocks": "the connector restores into other block ids than it read from "
    "(block axis misread, or block ids offset)",
    "shifted_tokens": "the connector's token offsets within the request are off",
    "zeros": "the connector did not write the blocks it reported loaded (block axis "
    "misread, e.g. a blocks-first cache treated as K/V-first)",
    "different": "the connector wrote bytes that are not this prefix's K/V (the block or K/V "
    "axis misread from the shape, e.g. a blocks-first cache treated as K/V-first)",
}


@dataclass(frozen=True)
class BlockVerdict:
    """One loaded block: its id, its index in the request, and how far it is from what was
    stored (the largest per-token, per-head difference of the K and V sums, relative to the
    token's magnitude)."""

    block_id: int
    index: int
    k_error: float
    v_error: float


@dataclass(frozen=True)
class LoadMismatch:
    """A request loaded blocks whose K/V content is not what this engine stored for those
    tokens (keyed by the engine's own token content, not by the connector's keys)."""

    layer: str
    request: str
    connector: str
    kind: str
    shift: int
    blocks: tuple[BlockVerdict, ...]
    checked_blocks: int
    block_size: int
    cache: str = ""  # the layer's cache description (describe_kv_cache), for the reader
    notes: tuple[str, ...] = field(default=())

    @property
    def block_ids(self) -> list[int]:
        return [b.block_id for b in self.blocks]

    def what(self) -> str:
        return KINDS.get(self.kind, self.kind).format(n=self.shift)

    def summary(self) -> str:
        ids = _ids(self.block_ids)
        return (
            f"kvguard connector: layer {self.layer!r}, request {self.request!r}: "
            f"{len(self.blocks)} of {self.checked_blocks} loaded blocks (ids {ids}) hold "
            f"{self.what()} against what this engine stored for those tokens; "
            f"{ADVICE.get(self.kind, '')} ({self.connector})"
        )

    def __str__(self) -> str:
        lines = [self.summary(), ""]
        lines.append(f"  connector: {self.connector}")
        lines.append(f"  layer:     {self.layer}")
        if self.cache:
            lines.append(f"  its cache: {self.cache}")
        lines.append(f"  request:   {self.request} (block size {self.block_size} tokens)")
        lines.append(f"  diagnosis: the loaded blocks hold {self.what()}")
        lines.append("  blocks that differ (id, index in the request, K error, V error):")
        for b in self.blocks[:16]:
            lines.append(
                f"    block {b.block_id:>6}  #{b.index:<4}  K {b.k_error:.3g}  V {b.v_error:.3g}"
            )
        if len(self.blocks) > 16:
            lines.append(f"    ... {len(self.blocks) - 16} more")
        lines.extend(f"  {note}" for note in self.notes)
        lines.append(f"  what to change: {ADVICE.get(self.kind, '')}")
        lines.append(
            "  (errors: the largest difference of a token's per-head K or V sum, relative "
            "to that token's sum of magnitudes; a faithful copy gives 0)"
        )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.summary()
        return data

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LoadMismatch:
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        fields["blocks"] = tuple(BlockVerdict(**b) for b in d.get("blocks", ()))
        fields["notes"] = tuple(d.get("notes", ()))
        return cls(**fields)


def _ids(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:8])
    return shown + (f", ... ({len(ids)})" if len(ids) > 8 else "")
