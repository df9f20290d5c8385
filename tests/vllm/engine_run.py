"""Run one tiny offline vLLM engine and write its greedy outputs as JSON (run as a script).

    python -m tests.vllm.engine_run MODEL_KIND MODEL_DIR OUT_JSON [--rounds N] [--repeat R]
        [--compile] [--warm-up SIZES]

MODEL_KIND is llama, gemma3 or whisper; the model directory is built by `tiny_models.py`
(config and seeded random weights). Everything that switches the guard on or off
comes from the environment (KVGUARD_MODE, VLLM_PLUGINS, ...), exactly as a user sets it.
The engine is created under `if __name__ == "__main__"` because vLLM spawns its processes.
With --repeat R (the benchmark), one untimed warm-up generate is followed by R timed ones.
--compile runs the model through torch.compile (vLLM's default; the tests otherwise run
eager); --warm-up 1,2,4 runs vLLM's dummy forward passes for those sizes on the bound caches
before the first request, as CUDA-graph capture does on a GPU (`warmup.py`).
"""

from __future__ import annotations

import json
import sys
import time
import traceback

PROMPTS = [
    [1, 17, 42, 99, 7, 3, 250, 11],
    [5, 6, 7, 8],
    [200, 100, 50, 25, 12, 6, 3],
    [9, 180, 33, 64, 128, 77],
]
MAX_TOKENS = 12
# Room for 16 blocks of 128 tokens per layer: the live blocks of all cache groups sit close
# together, so a layer whose split misplaces blocks lands in pages other layers own.
KV_CACHE_BYTES = {"llama": 2 << 20, "gemma3": 2 << 20, "whisper": 4 << 20}


def _requests(kind: str, model_dir: str, rounds: int):
    if kind != "whisper":
        return [{"prompt_token_ids": p} for p in PROMPTS * rounds]
    import numpy as np

    with open(f"{model_dir}/config.json") as f:
        start = json.load(f)["decoder_start_token_id"]

    audio = []
    for i in range(len(PROMPTS) * rounds):
        t = np.arange(16000, dtype=np.float32) / 16000
        audio.append(0.1 * np.sin(2 * np.pi * (220 + 110 * i) * t).astype(np.float32))
    return [
        {
            "encoder_prompt": {"prompt_token_ids": [], "multi_modal_data": {"audio": (a, 16000)}},
            "decoder_prompt": {"prompt_token_ids": [start]},
        }
        for a in audio
    ]


def main(argv: list[str]) -> int:
    kind, model_dir, out = argv[:3]
    rounds = int(argv[argv.index("--rounds") + 1]) if "--rounds" in argv else 1
    repeat = int(argv[argv.index("--repeat") + 1]) if "--repeat" in argv else 0
    warm_up = (
        [int(n) for n in argv[argv.index("--warm-up") + 1].split(",")]
        if "--warm-up" in argv
        else []
    )
    from vllm import LLM, SamplingParams

    kwargs = dict(
        model=model_dir,
        load_format="safetensors",
        skip_tokenizer_init=kind != "whisper",
        enforce_eager="--compile" not in argv,
        max_model_len=128,
        max_num_seqs=4,
        max_num_batched_tokens=128,
        kv_cache_memory_bytes=KV_CACHE_BYTES[kind],
        seed=0,
        dtype="float32",
    )
    if kind == "whisper":
        kwargs["limit_mm_per_prompt"] = {"audio": 1}
    if warm_up:
        kwargs["worker_extension_cls"] = "tests.vllm.warmup.CaptureLikeWarmUp"
    result: dict = {"ok": False}
    try:
        llm = LLM(**kwargs)
        if warm_up:
            llm.collective_rpc("kvguard_capture_like_warm_up", args=(warm_up,))
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
        requests = _requests(kind, model_dir, rounds)
        if repeat:
            llm.generate(requests, params, use_tqdm=False)
        seconds, cpu_seconds = [], []
        for _ in range(max(repeat, 1)):
            start, cpu_start = time.perf_counter(), time.process_time()
            outputs = llm.generate(requests, params, use_tqdm=False)
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu_start)
        result = {
            "ok": True,
            "tokens": [list(o.outputs[0].token_ids) for o in outputs],
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,  # all threads of this process (the engine, MP off)
            "generated": sum(len(o.outputs[0].token_ids) for o in outputs),
        }
    except Exception as exc:  # the test reads what the user would see
        result = {
            "ok": False,
            "error_type": type(exc).__name__,
            "error_module": type(exc).__module__,
            "error": str(exc),
            "traceback": traceback.format_exc(),
        }
    # which parts of kvguard this (the user's) process imported: the off path must stay light
    result["kvguard_modules"] = sorted(m for m in sys.modules if m.startswith("kvguard"))
    with open(out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
