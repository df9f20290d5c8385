"""Relative error ||out - ref|| / ||ref|| against a float32 torch SDPA reference, per layer, for
scenarios 1 and 2 on vLLM's Triton kernels: unguarded, correctly configured, and guarded in fix
mode (after vLLM-like warm-up: one dummy run per capture size, see Seat.warm_up).

    PYTHONPATH=. python benchmarks/gpu/scenario_errors.py
"""

from __future__ import annotations

import logging

from kvguard.runtime import Guard
from tests.gpu.harness import SCENARIOS, default_sizes, impl_classes, rel_error, run

RUNS = (("unguarded", None, False), ("correct config", None, True), ("fix", "fix", False))


def main() -> None:
    logging.getLogger("kvguard").setLevel(logging.ERROR)
    for name, build in SCENARIOS.items():
        for label, mode, correct in RUNS:
            classes = impl_classes()
            if mode:
                guard = Guard(mode)
                for cls in classes.values():
                    guard.wrap(cls)
            seats, raw = build(classes, default_sizes(), correct=correct)
            if mode:
                for s in seats:
                    s.warm_up(s.make_view(raw), 67)
            outs = run(seats, raw)
            errors = " ".join(
                f"{s.layer.layer_name}={rel_error(o, s.reference()):.3e}"
                for s, o in zip(seats, outs, strict=True)
            )
            print(f"{name:16s} {label:15s} {errors}")


if __name__ == "__main__":
    main()
