"""A Modbus exception answer in an installer's words: which exception, and what it means.

One table for everything that shows one — `gated discover` over TCP and RTU, the daemon's
output errors, `gated test-relay` — so "exception 4" is never printed bare. The names are
the Modbus Application Protocol's (v1.1b3, section 7, and 7 of earlier versions); pure, so
the installer's tools read it without loading pymodbus.
"""

from __future__ import annotations

# code -> (the protocol's name, what it means at a gate)
MEANINGS: dict[int, tuple[str, str]] = {
    1: ("illegal function", "the board does not support this request"),
    2: ("illegal data address", "the board has no such coil or input: check the coil/input numbers"),
    3: ("illegal data value", "the board refused the count or value asked for"),
    4: ("server device failure", "the board failed while carrying the request out"),
    5: ("acknowledge", "the board took the request and is still working on it"),
    6: ("server device busy", "the board is busy with a long request: ask again later"),
    7: ("negative acknowledge", "the board cannot carry this request out"),
    8: ("memory parity error", "the board found its own memory inconsistent"),
    10: ("gateway path unavailable", "the gateway has no route to this unit id: check the unit id and the gateway's setup"),
    11: ("gateway target device failed to respond",
         "no unit with this id answers behind this address: check the unit id"),
}


def describe(code: int) -> str:
    """'exception 2 (illegal data address): the board has no such coil or input: …'."""
    name, meaning = MEANINGS.get(code, ("not a standard code", "the board refused the request"))
    return f"exception {code} ({name}): {meaning}"
