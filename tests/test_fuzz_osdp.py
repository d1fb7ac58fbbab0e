"""OSDP events as libosdp hands them to the control panel's callback: whatever a reader
(or a tampered bus) puts in them, the reader shell counts a rejection or produces a
normalised card credential — it never raises into libosdp's callback thread."""

from __future__ import annotations

import asyncio
import secrets

import osdp
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.readers.osdp_reader import OsdpReader
from rules.credential import Credential, CredentialKind

values = st.one_of(
    st.none(), st.binary(max_size=64), st.text(max_size=40), st.integers(-5, 300), st.lists(st.integers(0, 255), max_size=20)
)
events = st.fixed_dictionaries(
    {},
    optional={
        "event": st.sampled_from([osdp.Event.CardRead, osdp.Event.KeyPress, 99, "x", None]),
        "data": values,
        "format": st.sampled_from([osdp.CardFormat.ASCII, osdp.CardFormat.Unspecified, osdp.CardFormat.Wiegand, 7, None]),
        "length": values,
        "reader_no": values,
    },
)


def reader() -> OsdpReader:
    return OsdpReader("osdp-fuzz", lambda: None, scbk=secrets.token_bytes(16), debounce=0.0)  # type: ignore[arg-type,return-value]


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=5))
def test_osdp_events_never_raise(evs: list[dict[str, object]]) -> None:
    r = reader()
    got: list[Credential] = []

    async def on_credential(c: Credential) -> None:
        got.append(c)

    async def feed() -> None:
        for ev in evs:
            await r._on_event(ev, on_credential)

    asyncio.run(feed())
    for c in got:
        assert c.kind == CredentialKind.CARD and c.value and c.value == c.value.strip().upper()
    assert r.stats["credentials"] == len(got)


def test_a_raw_card_read_becomes_a_hex_card() -> None:
    r = reader()
    got: list[Credential] = []

    async def on_credential(c: Credential) -> None:
        got.append(c)

    asyncio.run(r._on_event({"event": osdp.Event.CardRead, "format": osdp.CardFormat.Unspecified,
                             "data": bytes.fromhex("04a1b2c3"), "length": 32}, on_credential))
    assert [c.value for c in got] == ["04A1B2C3"]
