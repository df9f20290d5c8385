"""vLLM's own Triton attention kernels, imported from a wheel's pure-Python sources, no vLLM.

`prepare()` copies the kernel files out of a vLLM wheel (downloaded and extracted once by
`tests/vllm_sources.py`) into `.vllm-src/` at the repository root: git-ignored, so no vLLM
code enters the repository, and small enough to carry to a GPU machine that has no network.
`load()` registers the smallest stand-ins for the vLLM internals those files import
(envs, logger, platforms, triton_utils, kv_cache_interface, quant_utils) and imports the
real files; nothing of vLLM's is rewritten.

    python -m tests.gpu.vllm_kernels          # fills .vllm-src from vLLM 0.33.0
"""

from __future__ import annotations

import enum
import logging
import shutil
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

VERSION = "0.33.0"
SRC = Path(__file__).resolve().parents[2] / ".vllm-src"
OPS = "v1/attention/ops"
FILES = (
    f"{OPS}/triton_unified_attention.py",
    f"{OPS}/triton_reshape_and_cache_flash.py",
    f"{OPS}/triton_attention_helpers.py",
)
NATIVE_KV_DTYPES = {"auto", "float16", "bfloat16", "float32", "half", "float"}


def prepare(version: str = VERSION, dest: Path = SRC) -> Path:
    from tests.vllm_sources import vllm_tree

    tree = vllm_tree(version) / "vllm"
    for rel in FILES:
        target = dest / "vllm" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tree / rel, target)
    (dest / "VERSION").write_text(f"vllm {version}\n")
    return dest


def missing_reason(src: Path = SRC) -> str | None:
    """Why the kernels cannot load here, or None."""
    absent = [rel for rel in FILES if not (src / "vllm" / rel).is_file()]
    if absent:
        return f"{src} lacks vLLM's Triton kernels; run `python -m tests.gpu.vllm_kernels`"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    return None


# Stand-ins for the vLLM internals the kernel files import --------------------------------
class _Logger(logging.LoggerAdapter):
    def debug_once(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args)

    def info_once(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.info(msg, *args)

    def warning_once(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.warning(msg, *args)


class _Platform:
    """CUDA as the kernels ask about it. Off CUDA (the Triton interpreter, for debugging on a
    CPU) it answers like an XPU so the launchers skip their CUDA capability query."""

    def _capability(self) -> int:
        if not torch.cuda.is_available():
            return 0
        major, minor = torch.cuda.get_device_capability()
        return major * 10 + minor

    def fp8_dtype(self) -> torch.dtype:
        return torch.float8_e4m3fn

    def is_cuda(self) -> bool:
        return torch.cuda.is_available()

    def is_rocm(self) -> bool:
        return False

    def is_xpu(self) -> bool:
        return not torch.cuda.is_available()

    def has_device_capability(self, capability: int) -> bool:
        return self._capability() >= capability

    def is_device_capability_family(self, capability: int) -> bool:
        return self._capability() // 10 == capability // 10


class KVQuantMode(enum.IntEnum):  # the values the kernels compare KV_QUANT_MODE against
    NONE = 0
    FP8_PER_TENSOR = 1
    INT8_PER_TOKEN_HEAD = 2
    FP8_PER_TOKEN_HEAD = 3
    INT4_PER_TOKEN_HEAD = 4


def _module(name: str, path: Path | None = None, **attrs: Any) -> types.ModuleType:
    mod = sys.modules.get(name)
    if mod is None:
        mod = types.ModuleType(name)
        sys.modules[name] = mod
    if path is not None:
        mod.__path__ = [str(path)]
    for key, value in attrs.items():
        setattr(mod, key, value)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, mod)
    return mod


def _install_shims(src: Path) -> None:
    import triton
    import triton.language as tl

    if "vllm" in sys.modules and not getattr(sys.modules["vllm"], "__kvguard_shim__", False):
        raise RuntimeError("a real vllm is already imported; the kernel shim would shadow it")
    root = src / "vllm"
    fp8 = torch.float8_e4m3fn
    _module("vllm", root, __kvguard_shim__=True)
    _module("vllm.envs", VLLM_BATCH_INVARIANT=False)
    _module("vllm.logger", init_logger=lambda name: _Logger(logging.getLogger(name), {}))
    _module("vllm.platforms", current_platform=_Platform())
    _module("vllm.triton_utils", triton=triton, tl=tl)
    _packages("vllm.model_executor.layers.quantization.utils")
    _module(
        "vllm.model_executor.layers.quantization.utils.quant_utils",
        FP8_DTYPE=fp8,
        get_fp8_min_max=lambda: (torch.finfo(fp8).min, torch.finfo(fp8).max),
    )
    _module("vllm.v1", root / "v1")
    _module(
        "vllm.v1.kv_cache_interface",
        KVQuantMode=KVQuantMode,
        is_quantized_kv_cache=lambda dtype: dtype not in NATIVE_KV_DTYPES,
    )
    _module("vllm.v1.attention", root / "v1" / "attention")
    _module("vllm.v1.attention.ops", root / OPS)


def _packages(dotted: str) -> None:
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        _module(".".join(parts[:i]))


class LaunchCounter:
    """Stands in for a Triton kernel object; counts launches that returned (really ran)."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.launches = 0

    def __getitem__(self, grid: Any):
        launcher = self.kernel[grid]

        def launch(*args: Any, **kwargs: Any) -> Any:
            result = launcher(*args, **kwargs)
            self.launches += 1
            return result

        return launch


@dataclass
class Kernels:
    unified_attention: Any
    reshape_and_cache_flash: Any
    counters: dict[str, LaunchCounter]

    def launches(self) -> int:
        return sum(c.launches for c in self.counters.values())


_LOADED: Kernels | None = None


def load(src: Path = SRC) -> Kernels:
    """Import vLLM's kernel files through the shims; kernel objects wrapped in launch counters."""
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    reason = missing_reason(src)
    if reason:
        raise RuntimeError(reason)
    _install_shims(src)
    import importlib

    ua = importlib.import_module("vllm.v1.attention.ops.triton_unified_attention")
    rc = importlib.import_module("vllm.v1.attention.ops.triton_reshape_and_cache_flash")
    counters = {}
    for mod, name in (
        (ua, "kernel_unified_attention"),
        (ua, "reduce_segments"),
        (rc, "reshape_and_cache_kernel_flash"),
    ):
        counters[name] = LaunchCounter(getattr(mod, name))
        setattr(mod, name, counters[name])  # the launchers look these globals up per call
    _LOADED = Kernels(ua.unified_attention, rc.triton_reshape_and_cache_flash, counters)
    return _LOADED


if __name__ == "__main__":
    print(f"vLLM {VERSION} Triton kernels copied to {prepare()}")
