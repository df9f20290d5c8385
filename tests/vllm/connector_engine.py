"""Run one tiny offline vLLM engine with a KV connector (run as a script).

    python -m tests.vllm.connector_engine MODEL_DIR STORAGE OUT_JSON [--connector NAME]
        [--module MODULE] [--repeat R] [--warm-up] [--executor mp]

Two rounds of the same prompts: the first computes them (the connector stores their
blocks), the second starts from what the connector loads. Prefix caching is off, so the
second round's prefix can only come from the connector. The outputs of both rounds and the
seconds (wall and process CPU) of every round go to OUT_JSON; --repeat R adds R more such
pairs of rounds, each with prompts not seen before; --warm-up runs one untimed round of other
prompts first. Everything that switches kvguard on comes from the environment, as a user
sets it.
"""

from __future__ import annotations

import json
import sys
import time
import traceback

BLOCK_SIZE = 32
# 2 to 3 full blocks each: the ExampleConnector stores whole blocks of the prompt but its last token
PROMPTS = [[(7 * i + 3 * j) % 250 + 3 for j in range(66 + 9 * i)] for i in range(3)]
MAX_TOKENS = 8


def main(argv: list[str]) -> int:
    model_dir, storage, out = argv[:3]
    connector = argv[argv.index("--connector") + 1] if "--connector" in argv else "ExampleConnector"
    module = argv[argv.index("--module") + 1] if "--module" in argv else None
    repeat = int(argv[argv.index("--repeat") + 1]) if "--repeat" in argv else 0
    executor = argv[argv.index("--executor") + 1] if "--executor" in argv else None
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    transfer = KVTransferConfig(
        kv_connector=connector,
        kv_role="kv_both",
        kv_connector_module_path=module,
        kv_connector_extra_config={"shared_storage_path": storage},
    )
    result: dict = {"ok": False}
    try:
        llm = LLM(
            model=model_dir,
            load_format="safetensors",
            skip_tokenizer_init=True,
            enforce_eager=True,
            max_model_len=128,
            max_num_seqs=4,
            max_num_batched_tokens=256,
            kv_cache_memory_bytes=4 << 20,
            block_size=BLOCK_SIZE,
            enable_prefix_caching=False,
            kv_transfer_config=transfer,
            # "mp": the worker in a process of its own, apart from the scheduler's
            distributed_executor_backend=executor,
            seed=0,
            dtype="float32",
        )
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
        requests = [{"prompt_token_ids": p} for p in PROMPTS]
        if "--warm-up" in argv:  # other prompts first: what is timed is past first calls
            other = [{"prompt_token_ids": [t + 1 for t in p]} for p in PROMPTS]
            llm.generate(other, params, use_tqdm=False)
        rounds, seconds, cpu_seconds = [], [], []

        def timed(batch) -> list[list[int]]:
            start, cpu_start = time.perf_counter(), time.process_time()
            outputs = llm.generate(batch, params, use_tqdm=False)
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu_start)
            return [list(o.outputs[0].token_ids) for o in outputs]

        rounds = [timed(requests), timed(requests)]
        for r in range(repeat):  # prompts not seen before: computed and stored, then loaded
            fresh = [{"prompt_token_ids": [(t + 7 * r + 11) % 250 + 3 for t in p]} for p in PROMPTS]
            timed(fresh)
            timed(fresh)
        result = {
            "ok": True,
            "rounds": rounds,
            # even rounds compute and store their prompts, odd rounds load them
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
        }
    except Exception as exc:
        result = {"ok": False, "error": str(exc), "traceback": traceback.format_exc()}
    result["kvguard_modules"] = sorted(m for m in sys.modules if m.startswith("kvguard"))
    with open(out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
