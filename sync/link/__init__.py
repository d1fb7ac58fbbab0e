"""The MQTT link to the central system and the site's other daemons (sync/__init__.py has
the map of `sync`; docs/protocol.md is the contract).

| module | what |
| --- | --- |
| `link.py` | `SyncLink`: the asyncio shell around aiomqtt that performs what the session asks |
| `catch_up.py`, `qr_contest.py`, `lookups.py` | the shell's parts with state of their own: answering a peer's catch-up request, one QR code's contest across the site, live look-ups of unknown cards |
| `client.py` | the aiomqtt client for one broker (TLS, will, bounded inbound queue); `mqtt_call` |
| `session.py` | the protocol as a state machine, without I/O: messages and time in, actions out |
| `actions.py`, `session_config.py` | what the session asks its shell to do; its configuration and the store's state it starts from |
| `peer_marks.py` | how far each other daemon of the site is heard (pure, fed by the session) |
| `inbound.py`, `reconnect.py` | the inbound queue bounded per class of topic; which broker next and when |
| `settings.py` | the broker settings (pydantic only) |
| `port.py` | the link's port into the store and the snapshot import: every read and write the protocol causes |

`SyncLink` (and what comes with it) is loaded when first named: reading a configuration
(`MqttSettings`) must not import the MQTT client (aiomqtt, paho).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sync.link.settings import MqttSettings

if TYPE_CHECKING:
    from sync.link.link import SyncLink, mqtt_call, software_version

__all__ = ["MqttSettings", "SyncLink", "mqtt_call", "software_version"]

_IN_LINK = frozenset({"SyncLink", "mqtt_call", "software_version"})


def __getattr__(name: str) -> Any:
    if name in _IN_LINK:
        return getattr(importlib.import_module("sync.link.link"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
