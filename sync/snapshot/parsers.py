"""The snapshot worker's parser processes (sync/snapshot/worker.py): a few forked
processes, each running sync/snapshot/parse.py's `parse_task` on the chunks it is
given, the results read back in chunk order.

Not multiprocessing.Pool: its worker-handler thread waits on the results pipe among
other things and, while a result is waiting there, wakes at once, looks for dead
workers and waits again, round and round until the result is read (CPython 3.11). With
a few hundred kilobytes a chunk coming back, that spin was a quarter of the builder's
CPU at a million members (32 CPU-s against 24 without it). Here there is no thread
but the one that feeds the chunks in: chunk k goes to parser k mod N, down a pipe of
that parser's own, and the builder reads chunk k's result from that parser's pipe,
so the order needs no bookkeeping, and a parser waits with at most one finished chunk
until the builder reads it.

A parser that dies (the OOM killer, a signal) is seen by its process sentinel, and
reading from it raises `BuildError` instead of waiting for ever.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from sync.snapshot.parse import BuildError, ParseResult, Task, init_parser, parse_task

# the longest a parser is given to go once told to (then it is killed)
STOP_WAIT = 2.0  # seconds


def _serve(params: dict[str, Any], tasks: Connection, results: Connection, inherited: list[Connection]) -> None:
    """A parser process: tasks in, results out, until told to stop (None) or the builder
    goes away (its task pipe at its end, its result pipe broken)."""
    # the builder's ends of this parser's pipes and of the earlier parsers', copied by the
    # fork: held here, they would keep the parsers from seeing the builder go (the OOM
    # killer takes the builder first, the largest), and they would wait for ever, their
    # memory and the spool held
    for conn in inherited:
        conn.close()
    init_parser(params)
    try:
        while (task := tasks.recv()) is not None:
            results.send(parse_task(task))
    except (EOFError, OSError):
        pass  # the builder went away: nothing to answer


class Parsers:
    """N parser processes, forked from the builder before it opens any SQLite connection
    (a forked copy of an open connection is not safe to use)."""

    def __init__(self, n: int, params: dict[str, Any]):
        ctx = multiprocessing.get_context("fork")
        self.processes: list[BaseProcess] = []
        self._tasks: list[Connection] = []
        self._results: list[Connection] = []
        for i in range(n):
            task_r, task_w = ctx.Pipe(duplex=False)
            result_r, result_w = ctx.Pipe(duplex=False)
            inherited = [task_w, result_r, *self._tasks, *self._results]  # the builder's ends
            p = ctx.Process(
                target=_serve, args=(params, task_r, result_w, inherited), name=f"snapshot-parser-{i}", daemon=True
            )
            p.start()
            task_r.close()
            result_w.close()
            self.processes.append(p)
            self._tasks.append(task_w)
            self._results.append(result_r)

    def map(self, tasks: Iterable[Task]) -> Iterator[ParseResult]:
        """parse_task's result for each task, in the order of `tasks`. `tasks` is iterated
        in a thread of its own, so it may block (the worker's chunks arrive as they
        arrive); its pace is its own business (the worker's `_Control` keeps it a
        bounded number of chunks ahead of the builder)."""
        n = len(self.processes)
        order: queue.Queue[int | None] = queue.Queue()  # which parser has the next result

        def feed() -> None:
            try:
                for k, task in enumerate(tasks):
                    # first: a parser that is gone is then found so, reading from it
                    order.put(k % n)
                    self._tasks[k % n].send(task)
            except OSError:
                pass  # that parser is gone (above)
            finally:
                order.put(None)

        threading.Thread(target=feed, name="snapshot-feed", daemon=True).start()
        while (i := order.get()) is not None:
            yield self._result(i)

    def _result(self, i: int) -> ParseResult:
        conn, process = self._results[i], self.processes[i]
        wait([conn, process.sentinel])
        try:
            # a result sent just before the parser went is still there to read
            if conn.poll():
                result: ParseResult = conn.recv()
                return result
        except EOFError:
            pass
        process.join(STOP_WAIT)
        raise BuildError(f"a parser process ended unexpectedly (exit code {process.exitcode})")

    def close(self) -> None:
        """Tell the parsers to stop, and kill those that do not."""
        for conn in self._tasks:
            try:
                conn.send(None)
            except OSError:
                pass
        for p in self.processes:
            p.join(STOP_WAIT)
            if p.is_alive():
                p.kill()
                p.join()

    def kill(self) -> None:
        for p in self.processes:
            if p.is_alive():
                p.kill()
        for p in self.processes:
            p.join()
