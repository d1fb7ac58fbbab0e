"""A Python program under tracemalloc, for `gated sim day --trace-memory`: what grows in a
daemon's heap through the day, by the line that allocated it. The harness runs `gated run`
under it as `python -m cProfile -m MODULE` would, by module name in the process it
starts (the simulator imports no part of gated):

    python -X tracemalloc=6 -m simulator.day.harness.traced OUT.json -m gated.cli run -c gated.yaml

After `warmup` seconds a first snapshot is taken; then every `every` seconds the
allocations that grew most since then (by file and line, with their stack) are written to
OUT.json, so what a killed daemon last wrote stays readable. tracemalloc costs CPU and
memory of its own (RSS is not comparable with a run without it): use it to find what
grows, not to measure how much.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path

# not the daemon's own: tracemalloc's bookkeeping, modules imported on first use
_IGNORE = [
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
]


def _snapshot() -> tracemalloc.Snapshot:
    return tracemalloc.take_snapshot().filter_traces(_IGNORE)


def _watch(out: Path, warmup: float, every: float) -> None:
    time.sleep(warmup)
    first = _snapshot()
    t0 = time.monotonic()
    while True:
        time.sleep(every)
        snap = _snapshot()
        stats = snap.compare_to(first, "traceback")
        top = []
        for s in stats[:25]:
            top.append({
                "grew_kb": round(s.size_diff / 1024, 1),
                "count_diff": s.count_diff,
                "kb_now": round(s.size / 1024, 1),
                "stack": [f"{f.filename.rsplit('/site-packages/', 1)[-1]}:{f.lineno}" for f in s.traceback][-8:],
            })
        traced, peak = tracemalloc.get_traced_memory()
        total = sum(s.size_diff for s in stats)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seconds_since_first": round(time.monotonic() - t0, 1),
                                   "traced_kb": round(traced / 1024), "grew_kb_total": round(total / 1024, 1),
                                   "top": top}))
        tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "-m":
        print("usage: python -X tracemalloc=6 -m simulator.day.harness.traced OUT.json -m MODULE [ARGS...]", file=sys.stderr)
        return 2
    out, module, rest = Path(args[0]), args[2], args[3:]
    if not tracemalloc.is_tracing():
        tracemalloc.start(6)
    warmup = float(os.environ.get("GATED_TRACE_WARMUP", "90"))
    every = float(os.environ.get("GATED_TRACE_EVERY", "30"))
    threading.Thread(target=_watch, args=(out, warmup, every), daemon=True, name="tracemalloc").start()
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)  # its exit status: its SystemExit
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
