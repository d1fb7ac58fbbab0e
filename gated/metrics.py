"""Prometheus metrics of one daemon (its own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


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
        self.unconfirmed = Counter(
            "gated_passage_unconfirmed", "Grants found at start-up whose commit a crash had cut", registry=r
        )
        self.tap_errors = Counter("gated_tap_errors", "Taps that failed with an unexpected error (entry denied)", registry=r)
        self.safety = Gauge(
            "gated_safety_state", "1 while a safety state is on: lockdown, emergency_release, fire_alarm", ["state"], registry=r
        )
        self.fire_input_up = Gauge("gated_fire_input_up", "1 when the fire-alarm input is read successfully", registry=r)

    def serve(self, bind: str, port: int) -> None:
        start_http_server(port, addr=bind, registry=self.registry)
