"""A vLLM worker extension that runs, on the bound caches, the dummy forward passes vLLM's
CUDA-graph capture runs on a GPU: one per capture size, with no attention metadata, so every
backend's `forward` returns early. On a CPU engine vLLM runs none after binding the caches;
this gives the guard the warm-up a GPU deployment gives it before the first real request.

    LLM(..., worker_extension_cls="tests.vllm.warmup.CaptureLikeWarmUp")
    llm.collective_rpc("kvguard_capture_like_warm_up", args=([1, 2, 4, 8],))
"""

from __future__ import annotations


class CaptureLikeWarmUp:
    def kvguard_capture_like_warm_up(self, sizes: list[int]) -> int:
        runner = self.model_runner  # the worker's; vLLM mixes this class into the worker
        for num_tokens in sizes:
            runner._dummy_run(num_tokens)
        return len(sizes)
