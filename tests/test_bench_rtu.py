"""Keeps the RTU benchmark from rotting: a few taps through the real daemon on an emulated
9,600-baud line. No timing assertions (figures are `make bench`'s): every tap opens its
gate, every passage is seen, the daemon never glues two frames, and the busy minute's
figures (issue 22) are measured."""

from __future__ import annotations

from bench import rtu


def test_rtu_bench_runs_and_the_line_stays_clean() -> None:
    res = rtu.run(runs=1, taps=3, busy_rounds=2, log=lambda _: None)
    assert res["n"] == 3 and res["misses"] == 0 and res["unconfirmed"] == 0
    assert res["line"]["violations"] == 0 and res["line"]["frames"] > 0
    assert res["daemon_line"]["transport"] == "rtu" and res["daemon_line"]["writes"] >= 6
    busy = res["busy"]
    assert busy["passages"] == 6 and busy["unread_ms"]["n"] > 0 and busy["promise_ms"] > 0
    # the gates take turns: three devices on the line, none waits for two of another's exchanges
    assert res["daemon_line"]["stations"] == 3 and res["daemon_line"]["max_poll_turns"] <= 2
