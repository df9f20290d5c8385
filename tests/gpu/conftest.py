"""GPU tests: the guard in front of vLLM's real Triton kernels. They need a CUDA device (or,
to debug on a CPU, the Triton interpreter: KVGUARD_GPU_INTERPRET=1 TRITON_INTERPRET=1, tiny
sizes) and `.vllm-src/` filled by `python -m tests.gpu.vllm_kernels`; elsewhere they skip."""

from __future__ import annotations

import os

import pytest
import torch


def gpu_skip_reason() -> str | None:
    interpret = os.environ.get("KVGUARD_GPU_INTERPRET") == "1"
    if interpret and os.environ.get("TRITON_INTERPRET") != "1":
        return "KVGUARD_GPU_INTERPRET=1 needs TRITON_INTERPRET=1 as well"
    if not torch.cuda.is_available() and not interpret:
        return "needs a CUDA device (torch.cuda.is_available() is False)"
    from .vllm_kernels import missing_reason

    return missing_reason()


@pytest.fixture(autouse=True)
def _needs_gpu(request: pytest.FixtureRequest) -> None:
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    if request.node.get_closest_marker("cuda_only") and not torch.cuda.is_available():
        pytest.skip("CUDA graphs and sync checks need a real CUDA device")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda_only: needs CUDA itself, not the interpreter")
