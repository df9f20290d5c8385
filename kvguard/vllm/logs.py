"""kvguard's log records inside vLLM go where vLLM's own go.

vLLM configures the `vllm` logger (handler, format with process name and source line,
level from VLLM_LOGGING_LEVEL, or the user's VLLM_LOGGING_CONFIG_PATH) and may configure it
again in each process it starts. The `kvguard` logger has no handler of its own, so without
this its warnings would reach Python's last-resort handler, unformatted, in the middle of
vLLM's progress bars. `route_through_vllm()` gives it one handler that hands each record to
whatever the `vllm` logger has at that moment (looked up per record, so later
reconfigurations are followed), honouring that logger's level.
"""

from __future__ import annotations

import logging

KVGUARD_LOGGER = "kvguard"
VLLM_LOGGER = "vllm"


class _ThroughVllm(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(VLLM_LOGGER)
        if target.isEnabledFor(record.levelno):
            target.handle(record)


def route_through_vllm() -> logging.Logger:
    """Send the `kvguard` logger's records through vLLM's logging configuration (idempotent)."""
    logger = logging.getLogger(KVGUARD_LOGGER)
    if not any(isinstance(h, _ThroughVllm) for h in logger.handlers):
        logger.addHandler(_ThroughVllm())
    logger.propagate = False  # vLLM's handler prints it; the root logger must not again
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.DEBUG)  # the `vllm` logger's level decides, per record
    return logger


def guard_on_line(mode: str, bindings: list[dict], declared: int) -> str:
    """The one INFO line a process that holds caches writes once they are bound."""
    from kvguard.runtime.render import plural

    bound = [b for b in bindings if b.get("kv_cache") is not None]
    storages = {b["kv_cache"]["storage_ptr"] for b in bound}
    return (
        f"kvguard: guard on (mode {mode}): {plural(len(bound), 'attention layer')} guarded on "
        f"{plural(len(storages), 'KV-cache allocation')}; page maps declared by vLLM for "
        f"{declared}, inferred for {len(bound) - declared}"
    )


def unguarded_line(records: list[dict], unwrapped: dict[str, str]) -> str | None:
    """A warning for layers bound to a cache whose impl class the guard could not wrap (no
    method takes `layer` and `kv_cache`), with the reason and the call to make, or None."""
    from kvguard.runtime.render import plural

    missed = [r for r in records if r.get("kv_cache") is not None and r["impl"] in unwrapped]
    if not missed:
        return None
    impls = sorted({r["impl"] for r in missed})
    return f"kvguard: {plural(len(missed), 'attention layer')} not guarded: " + "; ".join(
        unwrapped[i] for i in impls
    )


def summary_line(
    guard, report_path: str | None, bindings: list[dict] | None = None
) -> tuple[int, str]:
    """(level, text) of the one line a process writes at shutdown. With `bindings`, it counts
    every layer vLLM bound a cache to, the ones no call of reached the guard as never called
    (strict mode stopped the engine first): "6 layers bound: 1 violation, 5 never called"."""
    from kvguard.runtime.render import NEVER_CALLED, causes, plural

    layers = guard.layers
    counts: dict[str, int] = {}
    for record in layers:
        counts[record.status] = counts.get(record.status, 0) + 1
    seen = {record.name for record in layers}
    unjudged = {b["layer"] for b in bindings or () if b.get("kv_cache") is not None} - seen
    parts = [f"{n} {status}" for status, n in sorted(counts.items())]
    parts += [f"{len(unjudged)} {NEVER_CALLED}"] if unjudged else []
    total = plural(len(layers) + len(unjudged), "layer") + (" bound" if bindings else "")
    text = f"kvguard: summary (mode {guard.mode}): {total}: {', '.join(parts) or 'none'}"
    violations = guard.violations
    if violations:
        text += (
            f"; {plural(len(violations), 'violation')}, "
            f"{plural(len(causes(violations)), 'root cause')}"
        )
    if report_path:
        text += f"; report {report_path} (kvguard report {report_path.rsplit('/', 1)[0]})"
    unrepaired = any(v.action != "fixed" for v in violations)
    return (logging.WARNING if unrepaired else logging.INFO), text
