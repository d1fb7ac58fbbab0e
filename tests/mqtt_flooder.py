"""Publishes messages at a steady rate for a bounded time, from a process of its own (a
compromised gate, or anything the broker lets publish): tests/test_floods.py.

    python -m tests.mqtt_flooder PORT SECONDS RATE TOPIC=KIND [TOPIC=KIND ...]

KIND is `events` (a valid batch of access events from the daemon the topic names, each
message with new seqs) or `delta` (a valid delta with one member, new delta_seq each).
Prints how many it published.
"""

from __future__ import annotations

import json
import sys
import time

import paho.mqtt.client as mqtt


def events(daemon: str, n: int) -> bytes:
    evs = [
        {"id": f"{daemon}-{n * 4 + i}", "seq": n * 4 + i + 1, "type": "access", "at": "2026-01-01T10:00:00Z",
         "gate": "in-9", "member": f"m{(n * 4 + i) % 5000}", "decision": "granted", "reason": "walk_in",
         "passed": True, "credential": "card", "detail": "x" * 120}
        for i in range(4)
    ]
    return json.dumps({"v": 1, "daemon": daemon, "events": evs, "zones": {"in-9": "main"}}).encode()


def delta(n: int) -> bytes:
    members = [{"id": f"flood-{n}", "name": "F" * 200, "cards": [f"{n:010X}"]}]
    return json.dumps({"v": 1, "delta_seq": 10_000 + n, "members": members}).encode()


def main(port: int, seconds: float, rate: float, targets: list[tuple[str, str]]) -> int:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flooder", protocol=mqtt.MQTTv5)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    sent = 0
    start = time.monotonic()
    try:
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate)
            while sent < due:
                topic, kind = targets[sent % len(targets)]
                n = sent // len(targets)
                payload = events(topic.split("/")[-2], n) if kind == "events" else delta(n)
                client.publish(topic, payload, qos=0)
                sent += 1
            time.sleep(0.005)
    finally:
        client.loop_stop()
        client.disconnect()
    print(sent, flush=True)
    return 0


if __name__ == "__main__":
    targets = [tuple(a.split("=", 1)) for a in sys.argv[4:]]
    sys.exit(main(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), targets))  # type: ignore[arg-type]
