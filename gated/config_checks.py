"""The checks of a configuration that look across sections: devices shared between gates,
the inputs and coils of one board, addresses, and the hints an installer needs.

They run on the YAML as loaded (plain dicts and lists), not on the validated models, so
they report even when other keys are invalid: `gated check-config` shows every problem of
a file in one pass. Every check tolerates a part of the wrong shape (that part has its
own error from the models) and says which key is at fault.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from drivers.outputs.bus import LineTiming
from drivers.outputs.config import FAST_POLL, PARITY_LETTER, host_problem

Path = tuple[str | int, ...]
Problem = tuple[Path, str]

_UNSTABLE_DEVICE = re.compile(r"^/dev/tty(USB|ACM)\d+$")


def _dicts(value: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, dict):
                yield i, item


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    return None


def _link(d: dict[str, Any]) -> tuple[str, str] | None:
    """The physical line of a Modbus device section, as the daemon shares it."""
    transport = d.get("transport", "tcp")
    if transport == "rtu" and isinstance(d.get("device"), str):
        return ("rtu", d["device"])
    if transport == "tcp" and isinstance(d.get("host"), str):
        return ("tcp", f"{d['host']}:{d.get('port', 502)}")
    return None


def _setting(key: str, value: Any) -> str:
    """A line setting as the daemon reads it (parity N or none, numbers as text)."""
    text = str(value).strip()
    return PARITY_LETTER.get(text.lower(), text.upper()) if key == "parity" else text.upper()


def _modbus_sections(data: dict[str, Any]) -> Iterator[tuple[Path, dict[str, Any]]]:
    for i, g in _dicts(data.get("gates")):
        if isinstance(g.get("output"), dict):
            yield ("gates", i, "output"), g["output"]
    if isinstance(data.get("fire_alarm"), dict):
        yield ("fire_alarm",), data["fire_alarm"]


def _where(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def problems(data: dict[str, Any]) -> list[Problem]:
    """Errors: (key path, message)."""
    out: list[Problem] = []
    gates = list(_dicts(data.get("gates")))
    # -- ids ---------------------------------------------------------------------------------
    seen_gates: dict[str, int] = {}
    seen_readers: dict[str, Path] = {}
    for i, g in gates:
        gid = g.get("id")
        if isinstance(gid, str):
            if gid in seen_gates:
                out.append((("gates", i, "id"), f"gate id {gid!r} repeats"))
            seen_gates.setdefault(gid, i)
        for j, r in _dicts(g.get("readers")):
            rid = r.get("id")
            if isinstance(rid, str):
                if rid in seen_readers:
                    out.append((("gates", i, "readers", j, "id"), f"reader id {rid!r} repeats"))
                seen_readers.setdefault(rid, ("gates", i, "readers", j))
    # -- one RS-485 line, one set of line settings ------------------------------------------------
    first_on_line: dict[tuple[str, str], tuple[Path, dict[str, Any]]] = {}
    for path, d in _modbus_sections(data):
        link = _link(d)
        if link is None or link[0] != "rtu":
            continue
        if link not in first_on_line:
            first_on_line[link] = (path, d)
            continue
        first_path, first = first_on_line[link]
        for key, default in (("baudrate", 9600), ("parity", "N"), ("stopbits", 1)):
            # as written in YAML, numbers may arrive as text
            if _setting(key, d.get(key, default)) != _setting(key, first.get(key, default)):
                out.append((
                    (*path, key),
                    f"{link[1]} is one RS-485 line, shared with {_where(first_path)}: one set of line "
                    f"settings ({key} {first.get(key, default)} there, {d.get(key, default)} here)",
                ))
    # -- one board, each coil and input for one purpose ----------------------------------------
    coils: dict[tuple[Any, ...], Path] = {}
    inputs: dict[tuple[Any, ...], Path] = {}
    for path, d in _modbus_sections(data):
        link = _link(d)
        unit = _int(d.get("unit", 1))
        if link is None or unit is None:
            continue
        board = (*link, unit)
        if path[0] == "gates":
            coil = _int(d.get("coil", 0))
            if coil is not None:
                if (*board, coil) in coils:
                    out.append(((*path, "coil"), f"coil {coil} of unit {unit} on {link[1]} is already "
                                                 f"{_where(coils[(*board, coil)])}'s relay"))
                coils.setdefault((*board, coil), path)
            names: tuple[str, ...] = ("passage_input", "door_contact")
        else:
            names = ("input",)
        for name in names:
            address = _int(d.get(name))
            if address is None:
                continue
            spot = (*board, address)
            if spot in inputs and inputs[spot][:-1] != path:
                out.append(((*path, name), f"input {address} of unit {unit} on {link[1]} is already "
                                           f"{_where(inputs[spot])}"))
            inputs.setdefault(spot, (*path, name))
    # -- serial ports: one owner each -----------------------------------------------------------
    ports: dict[str, Path] = {}
    for path, d in _modbus_sections(data):
        link = _link(d)
        if link is not None and link[0] == "rtu":
            ports.setdefault(link[1], path)
    rtu_lines = set(ports)
    for i, g in gates:
        for j, r in _dicts(g.get("readers")):
            device = r.get("device")
            if r.get("type") not in ("serial", "osdp") or not isinstance(device, str):
                continue
            path = ("gates", i, "readers", j, "device")
            if device in rtu_lines:
                out.append((path, f"{device} is the Modbus RS-485 line of {_where(ports[device])}: a "
                                  "reader needs a port of its own"))
            elif device in ports:
                out.append((path, f"{device} is already {_where(ports[device])}'s port: one reader per "
                                  "serial port"))
            else:
                ports[device] = ("gates", i, "readers", j)
    out += file_problems(data)
    # -- addresses ----------------------------------------------------------------------------------
    for path, value in (
        (("console", "bind"), _get(data, "console", "bind")),
        (("metrics", "bind"), _get(data, "metrics", "bind")),
        (("mqtt", "host"), _get(data, "mqtt", "host")),
    ):
        if isinstance(value, str) and (why := host_problem(value)) is not None:
            out.append((path, why))
    return out


def _get(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)  # type: ignore[assignment]
    return data


# the files a configuration names (after credentials are read in): missing, the daemon
# cannot work (a TLS context that cannot be built fails every connection attempt)
FILES: tuple[Path, ...] = (
    ("mqtt", "ca_file"), ("mqtt", "cert_file"), ("mqtt", "key_file"),
    ("console", "tls_cert"), ("console", "tls_key"),
)


def file_problems(data: dict[str, Any]) -> list[Problem]:
    """Files named in the configuration that are not there, or cannot be read."""
    named: list[tuple[Path, Any]] = [(path, _get(data, *(str(k) for k in path))) for path in FILES]
    for i, g in _dicts(data.get("gates")):
        for j, r in _dicts(g.get("readers")):
            named.append((("gates", i, "readers", j, "scbk_file"), r.get("scbk_file")))
    out: list[Problem] = []
    for path, value in named:
        if not isinstance(value, str) or not value:
            continue
        if not os.path.isfile(value):
            out.append((path, f"no such file: {value}"))
        elif not os.access(value, os.R_OK):
            out.append((path, f"{value} cannot be read by this user"))
    return out


def _device_missing(device: str) -> bool:
    # a pseudo-terminal's /dev/pts/N or a path such as /dev/serial/by-id/...: a file there
    return device.startswith("/") and not os.path.exists(device)


def warnings(data: dict[str, Any]) -> list[tuple[Path, str]]:
    """Legal but risky, on the raw YAML: (key path, what to consider)."""
    out: list[tuple[Path, str]] = []
    devices: list[tuple[Path, str]] = []
    for i, g in _dicts(data.get("gates")):
        for j, r in _dicts(g.get("readers")):
            if isinstance(r.get("device"), str):
                devices.append((("gates", i, "readers", j, "device"), r["device"]))
    for path, d in _modbus_sections(data):
        if isinstance(d.get("device"), str):
            devices.append(((*path, "device"), d["device"]))
    for path, device in devices:
        if _UNSTABLE_DEVICE.match(device):
            out.append((path, f"{device} is numbered in plug-in order and may name another "
                              "adapter after a reboot: use its /dev/serial/by-id/... path "
                              "(`gated discover` lists them)"))
        if _device_missing(device):
            out.append((path, f"{device} does not exist: not plugged in, or another name "
                              "(`gated discover` lists the devices); the daemon keeps trying to open it"))
    out += _bus_load_warnings(data)
    out += _passage_pulse_warnings(data)
    kinds = {k for _, g in _dicts(data.get("gates")) for _, r in _dicts(g.get("readers"))
             if isinstance(k := r.get("card_format") if r.get("format") == "auto" else r.get("format"), str)}
    if kinds & {"hex", "em"} and kinds & {"decimal", "em-decimal"}:
        out.append((("gates",), "this site has EM4100 readers in hex and in decimal: a card string of 10 "
                                "digits without a type is read as the decimal card number; have the "
                                "central system send typed keys (em:…, em32:…) for such cards"))
    return out


def _bus_load_warnings(data: dict[str, Any]) -> list[tuple[Path, str]]:
    """The share of an RS-485 line the idle polling alone takes, from the line settings."""
    lines: dict[str, list[tuple[Path, dict[str, Any]]]] = defaultdict(list)
    for path, d in _modbus_sections(data):
        link = _link(d)
        if link is not None and link[0] == "rtu":
            lines[link[1]].append((path, d))
    out = []
    for device, sections in lines.items():
        first = sections[0][1]
        try:
            timing = LineTiming(int(first.get("baudrate", 9600)), _setting("parity", first.get("parity", "N")),
                                int(first.get("stopbits", 1)))
            load = 0.0
            for path, d in sections:
                # the outputs' RTU default, the fire input's default
                interval = float(d.get("poll_interval") or (0.25 if path[0] == "gates" else 0.2))
                wanted = [a for a in (_int(d.get("passage_input")), _int(d.get("door_contact")),
                                      _int(d.get("input"))) if a is not None]
                if wanted and interval > 0:
                    count = max(wanted) - min(wanted) + 1 if max(wanted) - min(wanted) < 16 else 1
                    load += timing.read_bits_s(count) / interval
            threshold = float(first.get("bus_load_warning", 0.7))
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        if load > threshold:
            out.append((
                (*sections[0][0], "device"),
                f"polling alone keeps {device} {load:.0%} busy at {timing.baudrate} baud (warning "
                f"above {threshold:.0%}): taps wait longer for the relay; raise poll_interval, the "
                "baud rate, or split the gates over two lines",
            ))
    return out


def _passage_pulse_warnings(data: dict[str, Any]) -> list[tuple[Path, str]]:
    """A gate whose RS-485 line cannot promise to read its controller's passage pulse: the
    devices on a line take turns, so a gate's input is read again at worst after one read,
    its poll interval and one exchange of each other device (LineTiming.shortest_pulse_seen_s)."""
    lines: dict[str, list[tuple[Path, dict[str, Any]]]] = defaultdict(list)
    for path, d in _modbus_sections(data):
        link = _link(d)
        if link is not None and link[0] == "rtu":
            lines[link[1]].append((path, d))
    out = []
    for device, sections in lines.items():
        first = sections[0][1]
        for path, d in sections:
            passage, door = _int(d.get("passage_input")), _int(d.get("door_contact"))
            if path[0] != "gates" or passage is None or d.get("passage_counter") is not None:
                continue  # a board's pulse counter counts every pulse, however short
            try:
                timing = LineTiming(int(first.get("baudrate", 9600)), str(first.get("parity", "N")),
                                    int(first.get("stopbits", 1)))
                fast = float(d.get("passage_poll_interval") or FAST_POLL)
                fast = min(fast, float(d.get("poll_interval") or fast))  # as the gate does
                if door is None or abs(door - passage) >= 16:
                    reads = [timing.read_bits_s(1)] * (1 if door is None else 2)
                else:
                    reads = [timing.read_bits_s(abs(door - passage) + 1)]
                shortest = timing.shortest_pulse_seen_s(len(sections), fast, reads)
                pulse = float(d.get("passage_pulse", 0.1))
            except (TypeError, ValueError):
                continue
            if shortest > pulse:
                out.append((
                    (*path, "passage_input"),
                    f"{device} carries {len(sections)} devices taking turns at {timing.baudrate} baud: this "
                    f"gate's passage input is sure to be read only in pulses of {shortest * 1000:.0f} ms or "
                    f"more, and the controller's passage pulse (passage_pulse) is {pulse * 1000:.0f} ms: a "
                    "person could pass unseen. Give the board's pulse counter (passage_counter), raise "
                    "the baud rate, shorten passage_poll_interval, or split the gates over two lines",
                ))
    return out


# -- "did you mean" ------------------------------------------------------------------------------


def close_timezones(name: str) -> list[str]:
    """IANA zone names close to `name` (case and the city's spelling forgiven)."""
    import zoneinfo

    zones = sorted(zoneinfo.available_timezones())
    by_lower = {z.lower(): z for z in zones}
    if name.lower() in by_lower:
        return [by_lower[name.lower()]]
    close = difflib.get_close_matches(name, zones, n=1, cutoff=0.6)
    if not close and "/" not in name:  # a city alone: Madrid → Europe/Madrid
        close = [z for z in zones if z.rsplit("/", 1)[-1].lower() == name.lower().replace(" ", "_")][:2]
    return close


def _unwrap(tp: Any) -> list[Any]:
    """The classes a field's type may hold (Optional, Annotated, unions, lists...)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [c for arg in typing.get_args(tp) for c in _unwrap(arg)]
    if origin in (list, tuple, set, frozenset):
        return [("item", c) for arg in typing.get_args(tp)[:1] for c in _unwrap(arg)]
    if origin is dict:
        return [("value", c) for arg in typing.get_args(tp)[1:2] for c in _unwrap(arg)]
    return [tp]


def allowed_keys(model: type[BaseModel], path: Path, data: Any) -> list[str] | None:
    """The keys the mapping at `path` may have, walking the models beside the data (a
    reader's `type` picks its model). None when the path leads nowhere known."""
    candidates: list[Any] = [model]
    node = data
    for part in path:
        nxt: list[Any] = []
        for c in candidates:
            if isinstance(part, int):
                nxt += [x[1] for x in ([c] if isinstance(c, tuple) else []) if x[0] == "item"]
                continue
            if isinstance(c, tuple) and c[0] == "value":
                nxt.append(c[1])
                continue
            if isinstance(c, type) and issubclass(c, BaseModel) and part in c.model_fields:
                nxt += _unwrap(c.model_fields[part].annotation)
        node = node.get(part) if isinstance(node, dict) and isinstance(part, str) else (
            node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None
        )
        models = [c for c in nxt if isinstance(c, type) and issubclass(c, BaseModel)]
        if isinstance(node, dict) and "type" in node and len(models) > 1:
            models = [m for m in models if _literal_type(m) == node["type"]] or models
            nxt = models + [c for c in nxt if not (isinstance(c, type) and issubclass(c, BaseModel))]
        candidates = nxt
    keys = sorted({k for c in candidates if isinstance(c, type) and issubclass(c, BaseModel) for k in c.model_fields})
    return keys or None


def _literal_type(model: type[BaseModel]) -> Any:
    field = model.model_fields.get("type")
    if field is None:
        return None
    args = typing.get_args(field.annotation)
    return args[0] if args else None


def did_you_mean(model: type[BaseModel], path: Path, data: Any) -> str | None:
    """The closest allowed key to the unknown last key of `path`, if one is close."""
    if not path or not isinstance(path[-1], str):
        return None
    keys = allowed_keys(model, path[:-1], data)
    if not keys:
        return None
    close = difflib.get_close_matches(path[-1], keys, n=1, cutoff=0.6)
    return close[0] if close else None
