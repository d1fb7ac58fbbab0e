"""Reader config models, the factory, discovery, and the sans-I/O helpers in base."""

from __future__ import annotations

import threading

import pytest
import yaml
from pydantic import ValidationError

from drivers.readers import discover as discover_mod
from drivers.readers.base import Backoff, Debouncer, Reader, ReaderHealth
from drivers.readers.config import (
    KeyboardReaderConfig,
    NfcReaderConfig,
    OsdpReaderConfig,
    SerialReaderConfig,
    build_reader,
    parse_reader_config,
    reader_config_adapter,
)
from drivers.readers.keyboard import KeyboardReader
from drivers.readers.nfc_reader import NfcReader
from drivers.readers.osdp_reader import OsdpReader
from drivers.readers.serial_reader import SerialReader
from rules.credential import CredentialKind
from simulator.serial_reader import VirtualSerialReader
from tests.readers_fixtures import Collector, running, wait_until

EXAMPLE = """
gates:
  - id: turnstile-1
    readers:
      - {type: serial, id: r1, device: /dev/serial/by-id/usb-FTDI-if00-port0,
         framing: stx-etx, checksum: xor-hex, format: hex}
      - {type: serial, id: w1, device: /dev/ttyUSB1, format: wiegand26, terminator: cr}
      - {type: nfc, id: n1, device: usb, targets: [106A]}
      - {type: keyboard, id: k1, device: /dev/input/by-id/usb-Scanner-event-kbd}
      - {type: osdp, id: o1, device: /dev/ttyUSB2, address: 3,
         scbk: 00112233445566778899AABBCCDDEEFF}
"""


def test_example_yaml_parses_into_each_type_and_builds() -> None:
    entries = yaml.safe_load(EXAMPLE)["gates"][0]["readers"]
    configs = [parse_reader_config(entry) for entry in entries]
    assert [type(c) for c in configs] == [
        SerialReaderConfig,
        SerialReaderConfig,
        NfcReaderConfig,
        KeyboardReaderConfig,
        OsdpReaderConfig,
    ]
    readers = [build_reader(c) for c in configs]
    assert [type(r) for r in readers] == [
        SerialReader,
        SerialReader,
        NfcReader,
        KeyboardReader,
        OsdpReader,
    ]
    for reader, cfg in zip(readers, configs, strict=True):
        assert isinstance(reader, Reader)
        assert reader.id == cfg.id
        assert reader.health is ReaderHealth.OFFLINE  # nothing opened yet


@pytest.mark.parametrize(
    "entry,fragment",
    [
        ({"type": "serial", "id": "r1", "device": "/dev/x", "baud": 9600}, "baud"),
        (
            {
                "type": "serial",
                "id": "r1",
                "device": "/dev/x",
                "format": "qr",
                "checksum": "xor-hex",
            },
            "xor-hex",
        ),
        ({"type": "osdp", "id": "o1", "device": "/dev/x"}, "scbk"),
        ({"type": "osdp", "id": "o1", "device": "/dev/x", "scbk": "1234"}, "32 hex"),
        ({"type": "laser", "id": "x"}, "type"),
        ({"type": "nfc", "id": "bad id"}, "id"),
    ],
)
def test_bad_entries_are_rejected_with_a_clear_message(entry: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_reader_config(entry)
    assert fragment in str(err.value)


def test_scbk_is_normalised_and_hidden_from_repr() -> None:
    cfg = parse_reader_config(
        {
            "type": "osdp",
            "id": "o1",
            "device": "/dev/x",
            "scbk": "00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff",
        }
    )
    assert isinstance(cfg, OsdpReaderConfig)
    assert cfg.scbk == "00112233445566778899AABBCCDDEEFF"
    assert "0011" not in repr(cfg)
    plain = parse_reader_config(
        {"type": "osdp", "id": "o1", "device": "/dev/x", "secure_channel": False}
    )
    assert isinstance(plain, OsdpReaderConfig) and plain.scbk is None


def test_every_field_is_documented_in_the_json_schema() -> None:
    schema = reader_config_adapter.json_schema()
    for name, model in schema["$defs"].items():
        if "properties" not in model:
            continue  # enums
        for field_name, prop in model["properties"].items():
            if field_name != "type":
                assert prop.get("description"), f"{name}.{field_name} has no description"


async def test_built_serial_reader_reads_from_a_pty(tmp_path) -> None:  # noqa: ANN001
    cfg = parse_reader_config(
        {
            "type": "serial",
            "id": "r9",
            "device": str(tmp_path / "rdr"),
            "format": "decimal",
            "debounce": 0,
        }
    )
    assert isinstance(cfg, SerialReaderConfig)
    with VirtualSerialReader(tmp_path / "rdr", cfg.frame_config()) as sim:
        reader = build_reader(cfg)
        got = Collector()
        async with running(reader, got):
            await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
            sim.tap("42")
            sim.tap("42")  # debounce 0: both pass
            first, second = await got.wait_count(2)
    assert (first.kind, first.value, second.value) == (
        CredentialKind.CARD,
        "0000000042",
        "0000000042",
    )


# --- base helpers -------------------------------------------------------------------


def test_debouncer_window_slides_from_last_sighting() -> None:
    d = Debouncer(2.0)
    card = CredentialKind.CARD
    assert d.accept("r1", card, "A", 0.0)
    assert not d.accept("r1", card, "A", 1.5)
    assert not d.accept("r1", card, "A", 3.0)  # still lying there: 1.5 s since last seen
    assert d.accept("r1", card, "A", 5.5)
    assert d.accept("r2", card, "A", 5.6)  # another reader is another tap
    assert d.accept("r1", CredentialKind.QR, "A", 5.7)
    for i in range(200):  # pruning keeps memory bounded
        d.accept("r1", card, f"C{i}", 100.0 + i * 3)
    assert len(d._last_seen) < 70


def test_backoff_doubles_up_to_cap_and_resets() -> None:
    b = Backoff(initial=0.5, cap=5.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    b.reset()
    assert b.next() == 0.5


# --- discovery ----------------------------------------------------------------------


def test_discover_returns_plain_data() -> None:
    found = discover_mod.discover().as_dict()
    assert set(found) == {"serial", "nfc", "input", "notes"}
    assert all(isinstance(port["path"], str) for port in found["serial"])
    by_id = [i for i, p in enumerate(found["serial"]) if p["path"].startswith("/dev/serial/by-id/")]
    assert by_id == list(range(len(by_id)))  # by-id paths come first


def test_discover_nfc_gives_up_on_a_hanging_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(discover_mod, "_nfc_usb_devices", lambda: release.wait(30) and [])
    try:
        devices, note = discover_mod.discover_nfc(timeout=0.2)
    finally:
        release.set()
    assert devices == [] and note is not None and "no answer" in note
