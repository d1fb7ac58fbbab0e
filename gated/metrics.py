"""Prometheus metrics of one daemon (its own registry, so tests can run several)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gated.fds import room_for


class _DeviceCollector(Collector):
    """Reader counters and Modbus line figures, read from the devices at scrape time (the
    devices keep them; nothing is copied on the tap path)."""

    def __init__(
        self,
        readers: Callable[[], Mapping[str, Mapping[str, int]]],
        lines: Callable[[], Mapping[str, Mapping[str, Any]]],
    ) -> None:
        self.readers = readers
        self.lines = lines

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        reader = CounterMetricFamily(
            "gated_reader",
            "Reader counters: frames, rejected_frames (garbage, checksum, parity, cut frames), "
            "credentials, debounced, reconnects, device_errors, callback_errors",
            labels=["reader", "counter"],
        )
        for rid, stats in sorted(self.readers().items()):
            for name, value in sorted(stats.items()):
                reader.add_metric([rid, name], float(value))
        yield reader
        lines = list(self.lines().items())
        load = GaugeMetricFamily(
            "gated_modbus_line_load", "Share of the last 10 s a Modbus RTU line was busy (wire time)", labels=["line"]
        )
        wait = GaugeMetricFamily(
            "gated_modbus_line_max_write_wait_ms", "Longest wait of a coil write for the line", labels=["line"]
        )
        turns = GaugeMetricFamily(
            "gated_modbus_line_max_poll_turns",
            "Most exchanges of other devices one read of a line waited behind (the devices take "
            "turns: at most their number - 1)",
            labels=["line"],
        )
        exchanges = CounterMetricFamily(
            "gated_modbus_line_exchanges", "Modbus requests on a line by kind", labels=["line", "kind"]
        )
        for name, figures in sorted(lines):
            if figures.get("load") is not None:
                load.add_metric([name], float(figures["load"]))
            wait.add_metric([name], float(figures.get("max_write_wait_ms", 0.0)))
            turns.add_metric([name], float(figures.get("max_poll_turns", 0)))
            for kind in ("writes", "polls", "failed", "abandoned"):
                exchanges.add_metric([name, kind], float(figures.get(kind, 0)))
        yield load
        yield wait
        yield turns
        yield exchanges


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.taps = Counter("gated_taps", "Taps by gate, decision and reason", ["gate", "decision", "reason"], registry=r)
        self.decision_seconds = Histogram(
            "gated_decision_seconds",
            "Credential in to decision out (in process)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.3, 1.0),
            registry=r,
        )
        self.outbox_depth = Gauge("gated_outbox_depth", "Events not yet acknowledged by the central system", registry=r)
        self.reader_up = Gauge("gated_reader_up", "1 when the reader is online", ["reader"], registry=r)
        self.relay_up = Gauge("gated_relay_up", "1 when the gate's relay board answers", ["gate"], registry=r)
        self.broker_up = Gauge("gated_broker_up", "1 when connected to the MQTT broker", registry=r)
        self.last_sync = Gauge("gated_last_sync_timestamp_seconds", "Unix time of the last successful sync", registry=r)
        self.alarms = Counter("gated_alarms", "Door and device alarms", ["gate", "kind"], registry=r)
        self.rejected_input = Counter("gated_rejected_input", "Inputs rejected as malformed", ["source"], registry=r)
        self.storage_ok = Gauge("gated_storage_ok", "1 when the store can record an entry (else entries are refused)", registry=r)
        self.storage_free = Gauge("gated_storage_free_bytes", "Free space on the store's file system", registry=r)
        self.uncommitted = Gauge(
            "gated_uncommitted_taps", "Taps acted on whose commit failed, held in memory and retried", registry=r
        )
        self.store_checks = Counter(
            "gated_store_checks",
            "SQLite quick_check runs over the store by result: ok, damaged (a storage fault), error (could not run)",
            ["result"],
            registry=r,
        )
        self.exits_unrecorded = Counter(
            "gated_exits_unrecorded",
            "Exits that opened during a storage fault and were counted, not kept for writing: beyond "
            "store.max_held_exits, or undecided because the store could not be read (reported in one "
            "exits_not_recorded alarm)",
            ["gate"],
            registry=r,
        )
        self.rotations_while_down = Counter(
            "gated_rotations_while_down",
            "Rotations a counting board (passage_counter) counted while the daemon was not reading it, "
            "found at start (rotations_while_down alarm), by `known`: counted (the people), or unknown "
            "(one per rotations_while_down_unknown alarm: the board restarted meanwhile)",
            ["gate", "known"],
            registry=r,
        )
        self.ledger_pruned = Counter(
            "gated_ledger_pruned",
            "Ledger rows deleted by the retention (store.retention, store.audit_retention), by table",
            ["table"],
            registry=r,
        )
        self.unconfirmed = Counter(
            "gated_passage_unconfirmed", "Grants found at start-up whose commit a crash had cut", registry=r
        )
        self.tap_errors = Counter("gated_tap_errors", "Taps that failed with an unexpected error (entry denied)", registry=r)
        self.safety = Gauge(
            "gated_safety_state", "1 while a safety state is on: lockdown, emergency_release, fire_alarm", ["state"], registry=r
        )
        self.knowledge_gap = Gauge(
            "gated_knowledge_gap", "1 while the gate knows it is missing something it relies on "
            "(gated/knowledge.py: uplink_stalled, deltas_behind, peers_unheard, peer_silent, clock_untrusted, clock_unconfirmed, numbering_unsure, own_history_missing, refunds_waiting, two_workers, daemon_id_in_use)", ["kind"], registry=r,
        )
        self.history_repairs = Counter(
            "gated_history_repairs", "Taps decided while this daemon's lost events of the day were missing, "
            "repaired once they came back (rules/recheck.py): refund (a walk-in they show free), qr_double_use, "
            "anti_passback_missed", ["remedy"], registry=r,
        )
        self.fire_input_up = Gauge("gated_fire_input_up", "1 when the fire-alarm input is read successfully", registry=r)
        self.memory = Gauge(
            "gated_memory_bytes", "Where the daemon's memory is (gated/memory.py): rss, sqlite (its page caches, "
            "bounded), heap_free (freed, kept by the allocator), heap_in_use, unexplained (rss - sqlite - heap_free: "
            "a leak rises here)", ["part"], registry=r,
        )

    def watch_devices(
        self,
        readers: Callable[[], Mapping[str, Mapping[str, int]]],
        lines: Callable[[], Mapping[str, Mapping[str, Any]]],
    ) -> None:
        """Export the readers' counters and the Modbus lines' figures on every scrape."""
        self.registry.register(_DeviceCollector(readers, lines))

    def serve(self, bind: str, port: int) -> None:
        """/metrics from a thread of its own (it answers while the event loop is stuck),
        within limits (_BoundedServer): a scraper may sit on another box, so a stranger can
        reach this port too."""
        server_class = type("MetricsServer", (_BoundedServer,), {
            "address_family": socket.AF_INET6 if ":" in bind else socket.AF_INET})
        httpd: WSGIServer = make_server(bind, port, make_wsgi_app(self.registry), server_class, handler_class=_QuietHandler)
        threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()


class _QuietHandler(WSGIRequestHandler):
    timeout = 5  # seconds a read may wait (the socket's timeout)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _BoundedServer(ThreadingMixIn, WSGIServer):
    """A thread per scrape, as prometheus_client's own server, but at most MAX_SCRAPES at
    once, each closed DEADLINE seconds after it was accepted (a slowloris sending a byte
    now and then defeats a read timeout alone), and none within FD_RESERVE descriptors of
    the process's limit (issue 22: what a stranger opens never takes the gates' own)."""

    daemon_threads = True
    MAX_SCRAPES = 8
    DEADLINE = 10.0
    FD_RESERVE = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.MAX_SCRAPES)
        self.refused = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not room_for(self.FD_RESERVE) or not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a scrape cut at its deadline, a client gone: not worth a traceback on stderr

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        def cut() -> None:
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(self.DEADLINE, cut)
        timer.daemon = True
        timer.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            timer.cancel()
            self._slots.release()
