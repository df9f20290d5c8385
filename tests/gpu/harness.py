"""vLLM's Triton attention kernels behind vLLM-shaped impls, scenario builders and an SDPA
reference, for the guard's GPU proof (tests/gpu and benchmarks/gpu).

The impls mirror vLLM 0.33's `TritonAttentionImpl` (`do_kv_cache_update` writes through
`triton_reshape_and_cache_flash`, `forward` reads through `unified_attention`, split-K scratch
for small decode batches); only their `_split_kv_cache` differs, which is the point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tests.runtime.harness import split_like_vllm_0_23

from .vllm_kernels import Kernels, load

MIN_LAUNCH_GRID_SIZE_2D = 128  # as vLLM's Triton backend: fewer seqs than this/heads -> 3D
NUM_PAR_SOFTMAX_SEGMENTS = 16


@dataclass(frozen=True)
class Sizes:
    num_blocks: int
    block_size: int
    kv_heads: int
    q_heads: int
    head_size: int
    batch: tuple[tuple[int, int], ...]  # per sequence (query_len, seq_len): a mixed step
    enc_lens: tuple[int, ...]  # cross-attention: encoder tokens per sequence
    pool: int  # block ids come from range(pool): a warm engine recycles low ids
    dtype: torch.dtype = torch.bfloat16

    @property
    def page_elems(self) -> int:  # one K (or V) block
        return self.block_size * self.kv_heads * self.head_size


def mixed(decode_ctx: list[int], prefill: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    return (*prefill, *((1, c) for c in decode_ctx))


# Realistic: 8k blocks of 16 tokens, 8 KV heads (32 query heads), head size 128, bf16; a step
# with a full prefill, a chunked prefill and six decodes of 300..4k tokens of context.
REALISTIC = Sizes(
    num_blocks=8192,
    block_size=16,
    kv_heads=8,
    q_heads=32,
    head_size=128,
    batch=mixed([700, 1500, 2100, 3000, 333, 4096], [(512, 512), (256, 1280)]),
    enc_lens=(1500,) * 8,
    pool=2048,
)
# For the Triton interpreter on a CPU (TRITON_INTERPRET=1): the same kinds of work, tiny.
TINY = Sizes(
    num_blocks=64,
    block_size=16,
    kv_heads=2,
    q_heads=4,
    head_size=32,
    batch=mixed([17, 50], [(20, 20), (8, 40)]),
    enc_lens=(30,) * 4,
    pool=24,
    dtype=torch.float16,  # the interpreter computes bf16 wrong (numpy has no bf16)
)


def decode_sizes(batch: int, enc_len: int = 1500, num_blocks: int = 16384) -> Sizes:
    """A decode-only step of `batch` sequences with 512..2047 tokens of context each."""
    tiny = not torch.cuda.is_available()
    base = TINY if tiny else REALISTIC
    ctx = [(40 if tiny else 512) + (i * 397) % (40 if tiny else 1536) for i in range(batch)]
    return Sizes(
        num_blocks=base.num_blocks if tiny else num_blocks,
        block_size=base.block_size,
        kv_heads=base.kv_heads,
        q_heads=base.q_heads,
        head_size=base.head_size,
        batch=mixed(ctx, []),
        enc_lens=(30 if tiny else enc_len,) * batch,
        pool=base.num_blocks if tiny else num_blocks,
        dtype=base.dtype,
    )


def default_sizes() -> Sizes:
    return REALISTIC if torch.cuda.is_available() else TINY


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# Impls ---------------------------------------------------------------------------------------
class Layer(torch.nn.Module):
    def __init__(self, name: str, dev: torch.device) -> None:
        super().__init__()
        self.layer_name = name
        self._k_scale = torch.ones((), dtype=torch.float32, device=dev)
        self._v_scale = torch.ones((), dtype=torch.float32, device=dev)


@dataclass
class Metadata:
    """The fields of vLLM's TritonAttentionMetadata that the kernels read."""

    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    max_query_len: int
    max_seq_len: int
    block_table: torch.Tensor
    causal: bool
    seq_threshold_3D: int
    num_par_softmax_segments: int
    softmax_segm_output: torch.Tensor
    softmax_segm_max: torch.Tensor
    softmax_segm_expsum: torch.Tensor


def impl_classes(kernels: Kernels | None = None) -> dict[str, type]:
    """Fresh classes per guard: Guard.wrap patches classes in place."""
    kernels = kernels or load()

    class TritonImpl:
        def __init__(self, sizes: Sizes, attn_type: str = "decoder") -> None:
            self.attn_type = attn_type
            self.head_size = sizes.head_size
            self.scale = sizes.head_size**-0.5

        def _split_kv_cache(self, kv_cache):
            raise NotImplementedError

        def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping):
            if slot_mapping is None:  # vLLM's dummy runs: no slots, no write
                return
            key_cache, value_cache = self._split_kv_cache(kv_cache)
            kernels.reshape_and_cache_flash(
                key,
                value,
                key_cache,
                value_cache,
                slot_mapping,
                "auto",
                layer._k_scale,
                layer._v_scale,
            )

        def forward(self, layer, query, key, value, kv_cache, attn_metadata, output):
            if attn_metadata is None:  # warm-up and piecewise capture, as vLLM's backends
                return output
            key_cache, value_cache = self._split_kv_cache(kv_cache)
            m = attn_metadata
            descale_shape = (m.query_start_loc.shape[0] - 1, key_cache.shape[2])
            kernels.unified_attention(
                q=query,
                k=key_cache,
                v=value_cache,
                out=output,
                cu_seqlens_q=m.query_start_loc,
                max_seqlen_q=m.max_query_len,
                seqused_k=m.seq_lens,
                max_seqlen_k=m.max_seq_len,
                softmax_scale=self.scale,
                causal=m.causal,
                window_size=(-1, -1),
                block_table=m.block_table,
                softcap=0,
                q_descale=None,
                k_descale=layer._k_scale.expand(descale_shape),
                v_descale=layer._v_scale.expand(descale_shape),
                seq_threshold_3D=m.seq_threshold_3D,
                num_par_softmax_segments=m.num_par_softmax_segments,
                softmax_segm_output=m.softmax_segm_output,
                softmax_segm_max=m.softmax_segm_max,
                softmax_segm_expsum=m.softmax_segm_expsum,
            )
            return output

    class KVFirstImpl(TritonImpl):  # (2, N, bs, h, d): FlashAttention-style layout
        def _split_kv_cache(self, kv_cache):
            return kv_cache.unbind(0)

    class BlocksFirstImpl(TritonImpl):  # (N, 2, bs, h, d), the plain unbind(1) of #43660
        def _split_kv_cache(self, kv_cache):
            return kv_cache.unbind(1)

    class AiterFixedImpl(TritonImpl):
        """vLLM 0.23.0's fixed split: cross-attention keeps the K/V-first bytes (#43945)."""

        def _split_kv_cache(self, kv_cache):
            return split_like_vllm_0_23(self.attn_type, kv_cache)

    class PackedTritonImpl(TritonImpl):
        """vLLM 0.33's own Triton split: (N, h, bs, 2*d) -> transpose -> K and V halves."""

        def _split_kv_cache(self, kv_cache):
            return kv_cache.transpose(1, 2).split(self.head_size, dim=-1)

    return {c.__name__: c for c in (KVFirstImpl, BlocksFirstImpl, AiterFixedImpl, PackedTritonImpl)}


# One layer's work in a step ----------------------------------------------------------------
@dataclass
class Seat:
    """One layer: its impl, its view of the shared buffer, its sequences, tokens and blocks."""

    impl: object
    layer: Layer
    make_view: Callable[[torch.Tensor], torch.Tensor]
    sizes: Sizes
    batch: tuple[tuple[int, int], ...]
    blocks: list[list[int]]
    causal: bool
    seed: int
    scratch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    fresh_tokens: bool = True  # False: all tokens are history (cross-attention's encoder K/V)
    keys: torch.Tensor = field(init=False)
    values: torch.Tensor = field(init=False)
    query: torch.Tensor = field(init=False)
    new_key: torch.Tensor = field(init=False)
    new_value: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        s, dev = self.sizes, device()
        g = torch.Generator(device=dev).manual_seed(self.seed)

        def randn(*shape):
            return torch.randn(*shape, generator=g, device=dev).to(s.dtype)

        total = sum(n for _, n in self.batch)
        self.keys = randn(total, s.kv_heads, s.head_size)
        self.values = randn(total, s.kv_heads, s.head_size)
        self.query = randn(sum(q for q, _ in self.batch), s.q_heads, s.head_size)
        slots, hist, new = [], [], []
        row = 0
        for (q, n), blocks in zip(self.batch, self.blocks, strict=True):
            for t in range(n):
                slots.append(blocks[t // s.block_size] * s.block_size + t % s.block_size)
                (new if self.fresh_tokens and t >= n - q else hist).append(row + t)
            row += n
        slots_t = torch.tensor(slots, dtype=torch.int64)
        self.hist_rows = torch.tensor(hist, dtype=torch.int64, device=dev)
        self.new_rows = torch.tensor(new, dtype=torch.int64, device=dev)
        self.hist_slots = slots_t[hist].to(dev)
        self.new_slots = slots_t[new].to(dev)
        self.new_key = self.keys[self.new_rows].clone()
        self.new_value = self.values[self.new_rows].clone()
        width = max(len(b) for b in self.blocks)
        table = torch.zeros(len(self.blocks), width, dtype=torch.int32)
        for i, b in enumerate(self.blocks):
            table[i, : len(b)] = torch.tensor(b, dtype=torch.int32)
        cu = torch.tensor([0, *torch.tensor([q for q, _ in self.batch]).cumsum(0).tolist()])
        segm_out, segm_max, segm_sum = self.scratch
        self.meta = Metadata(
            query_start_loc=cu.to(torch.int32).to(dev),
            seq_lens=torch.tensor([n for _, n in self.batch], dtype=torch.int32, device=dev),
            max_query_len=max(q for q, _ in self.batch),
            max_seq_len=max(n for _, n in self.batch),
            block_table=table.to(dev),
            causal=self.causal,
            seq_threshold_3D=MIN_LAUNCH_GRID_SIZE_2D // s.kv_heads,
            num_par_softmax_segments=NUM_PAR_SOFTMAX_SEGMENTS,
            softmax_segm_output=segm_out,
            softmax_segm_max=segm_max,
            softmax_segm_expsum=segm_sum,
        )
        self.output = torch.full_like(self.query, float("nan"))

    def renew(self, g: torch.Generator) -> None:
        """Fresh new-token K/V and queries, in place (static tensors for CUDA graphs)."""
        for static in (self.new_key, self.new_value, self.query):
            fresh = torch.randn(static.shape, generator=g, device=static.device)
            static.copy_(fresh.to(static.dtype))
        if self.new_rows.numel():
            self.keys[self.new_rows] = self.new_key
            self.values[self.new_rows] = self.new_value

    def write_history(self, kv: torch.Tensor) -> None:
        if self.hist_slots.numel():
            self.impl.do_kv_cache_update(
                self.layer,
                self.keys[self.hist_rows],
                self.values[self.hist_rows],
                kv,
                self.hist_slots,
            )

    def step(self, kv: torch.Tensor) -> torch.Tensor:
        """One engine step for this layer: write the new tokens, attend."""
        if self.new_slots.numel():
            self.impl.do_kv_cache_update(
                self.layer, self.new_key, self.new_value, kv, self.new_slots
            )
        return self.impl.forward(
            self.layer, self.query, self.new_key, self.new_value, kv, self.meta, self.output
        )

    def warm_up(self, kv: torch.Tensor, sizes: int, capture: bool = False) -> None:
        """What vLLM's warm-up and CUDA-graph capture hand a layer before any real step: one
        dummy run per size, with no slots and no metadata (the impl returns early). With
        `capture`, as in piecewise capture: each dummy attention call sits between captured
        graph pieces, and one more runs inside an active capture (no sync may happen there).
        """
        piece = torch.zeros(8, device=kv.device)
        for _ in range(sizes):
            if capture:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    piece.add_(1.0)
                    self.impl.do_kv_cache_update(self.layer, self.new_key, self.new_value, kv, None)
                    self.impl.forward(
                        self.layer, self.query, self.new_key, self.new_value, kv, None, self.output
                    )
            self.impl.do_kv_cache_update(self.layer, self.new_key, self.new_value, kv, None)
            self.impl.forward(
                self.layer, self.query, self.new_key, self.new_value, kv, None, self.output
            )

    def reference(self) -> torch.Tensor:
        """torch SDPA in float32 over this layer's own K/V, gathered per sequence."""
        s = self.sizes
        outs, row, qrow = [], 0, 0
        for q_len, n in self.batch:
            q = self.query[qrow : qrow + q_len].float().transpose(0, 1)
            k = self.keys[row : row + n].float().transpose(0, 1)
            v = self.values[row : row + n].float().transpose(0, 1)
            groups = s.q_heads // s.kv_heads
            k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
            mask = None
            if self.causal:
                pos = torch.arange(n - q_len, n, device=q.device)[:, None]
                mask = torch.arange(n, device=q.device)[None, :] <= pos
            o = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=s.head_size**-0.5
            )
            outs.append(o.transpose(0, 1))
            row, qrow = row + n, qrow + q_len
        return torch.cat(outs)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||; NaN (an unwritten output) counts as infinitely wrong."""
    out = out.float()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm())


def scratch(sizes: Sizes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split-K scratch shared by all layers, sized like vLLM's builder (decode batches)."""
    rows = MIN_LAUNCH_GRID_SIZE_2D // sizes.kv_heads
    pad = 1 << (sizes.head_size - 1).bit_length()
    shape = (rows, sizes.q_heads, NUM_PAR_SOFTMAX_SEGMENTS)
    dev = device()
    return (
        torch.empty(*shape, pad, dtype=torch.float32, device=dev),
        torch.empty(shape, dtype=torch.float32, device=dev),
        torch.empty(shape, dtype=torch.float32, device=dev),
    )


def _blocks(sizes: Sizes, groups: list[list[int]], seed: int) -> list[list[list[int]]]:
    """Block ids per sequence per layer, drawn without repeats from range(pool)."""
    g = torch.Generator().manual_seed(seed)
    free = torch.randperm(sizes.pool, generator=g).tolist()
    out = []
    for lens in groups:
        per_seq = []
        for n in lens:
            k = -(-n // sizes.block_size)
            if len(free) < k:
                raise ValueError(f"pool of {sizes.pool} blocks too small for the batch")
            per_seq.append(free[:k])
            del free[:k]
        out.append(per_seq)
    return out


# Scenarios: each returns (seats, raw buffer); the first seat defines the page map ------------
def new_raw(sizes: Sizes) -> torch.Tensor:
    """One layer slot of the engine's KV allocation: room for K and V of every block."""
    return torch.zeros(2 * sizes.num_blocks * sizes.page_elems, dtype=sizes.dtype, device=device())


def encoder_decoder(classes, sizes: Sizes, correct: bool = False, seed: int = 0, raw=None):
    """Scenario 1 (#43945): decoder self-attention K/V-first, cross-attention blocks-first on
    the same allocation. `correct` uses 0.23.0's as_strided split instead of unbind(1)."""
    n, bs, h, d = sizes.num_blocks, sizes.block_size, sizes.kv_heads, sizes.head_size
    raw = new_raw(sizes) if raw is None else raw
    cross_batch = tuple((q, e) for (q, _), e in zip(sizes.batch, sizes.enc_lens, strict=True))
    self_blocks, cross_blocks = _blocks(
        sizes, [[s for _, s in sizes.batch], [e for _, e in cross_batch]], seed
    )
    sc = scratch(sizes)
    dev = device()
    dec = Seat(
        classes["KVFirstImpl"](sizes),
        Layer(f"dec.{seed}.self_attn", dev),
        lambda r: r.view(2, n, bs, h, d),
        sizes,
        sizes.batch,
        self_blocks,
        True,
        3 * seed + 1,
        sc,
    )
    cross_impl = classes["AiterFixedImpl" if correct else "BlocksFirstImpl"]
    cross = Seat(
        cross_impl(sizes, "encoder_decoder"),
        Layer(f"dec.{seed}.cross_attn", dev),
        lambda r: r.view(n, 2, bs, h, d),
        sizes,
        cross_batch,
        cross_blocks,
        False,
        3 * seed + 2,
        sc,
        fresh_tokens=False,
    )
    return [dec, cross], raw


def spec_decode(classes, sizes: Sizes, correct: bool = False, seed: int = 0, raw=None):
    """Scenario 2 (#50237): the target on vLLM 0.33's packed Triton layout (N, h, bs, 2*d) and
    a K/V-first drafter on the same allocation. `correct` hands the drafter its K/V-first view
    re-strided by hand onto the target's pages, as #43945 did with as_strided."""
    n, bs, h, d = sizes.num_blocks, sizes.block_size, sizes.kv_heads, sizes.head_size
    p = sizes.page_elems
    raw = new_raw(sizes) if raw is None else raw
    t_blocks, d_blocks = _blocks(sizes, [[s for _, s in sizes.batch]] * 2, seed)
    sc = scratch(sizes)
    dev = device()
    target = Seat(
        classes["PackedTritonImpl"](sizes),
        Layer("target.0.attn", dev),
        lambda r: r.view(n, h, bs, 2 * d),
        sizes,
        sizes.batch,
        t_blocks,
        True,
        3 * seed + 1,
        sc,
    )
    if correct:
        view = lambda r: r.as_strided((2, n, bs, h, d), (p, 2 * p, h * d, d, 1))  # noqa: E731
    else:
        view = lambda r: r.view(2, n, bs, h, d)  # noqa: E731
    drafter = Seat(
        classes["KVFirstImpl"](sizes),
        Layer("drafter.0.attn", dev),
        view,
        sizes,
        sizes.batch,
        d_blocks,
        True,
        3 * seed + 2,
        sc,
    )
    return [target, drafter], raw


SCENARIOS = {"encoder_decoder": encoder_decoder, "spec_decode": spec_decode}


def run(seats: list[Seat], raw: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's history is written (earlier steps), then one mixed step per layer."""
    views = [s.make_view(raw) for s in seats]
    for s, kv in zip(seats, views, strict=True):
        s.write_history(kv)
    outs = []
    for s, kv in zip(seats, views, strict=True):
        s.output.fill_(float("nan"))
        outs.append(s.step(kv).clone())
    return outs
