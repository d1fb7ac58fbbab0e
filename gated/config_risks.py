"""The risk warnings of `gated check-config` (a fail-secure door on an escape route, a gate
without a reader, a cache that never goes stale, a console on the LAN without TLS, no MQTT
link, no trusted QR keys), worked out from the YAML as written.

check-config promises every warning with every error, so these are not read from a
validated Config (there is none while any error remains) but each from the few fields it
needs, each validated on its own by its section's field: a missing credential or a
misspelt timezone does not hide a fail-secure door on an escape route. A warning whose own
fields have errors cannot be known: it is named as waiting for them. gated/config.py
defines the sections; gated/config_checks.py has the checks across them.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from drivers.outputs.config import DoorMode, ModbusOutputConfig
from gated.config import ConsoleConfig, GateConfig, QrConfig, StaleCacheConfig
from gated.yamlload import Path as YamlPath
from gated.yamlload import dotted
from rules.timeutil import parse_duration

UNKNOWN: Any = type("Unknown", (), {"__repr__": lambda self: "UNKNOWN"})()  # a field that did not validate
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@cache
def _adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    info = model.model_fields[name]
    form: Any = Annotated[info.annotation, info]  # the field's type with its constraints
    return TypeAdapter(form)


def _field(model: type[BaseModel], section: Any, name: str) -> Any:
    """One field of a section as `model` reads it, validated alone: its default when the
    key is absent, UNKNOWN when the section is no mapping or the value does not validate."""
    if not isinstance(section, dict):
        return UNKNOWN
    if name not in section:
        return model.model_fields[name].get_default(call_default_factory=True)
    try:
        return _adapter(model, name).validate_python(section[name])
    except ValidationError:
        return UNKNOWN


def _key(path: YamlPath, section: Any, name: str) -> YamlPath:
    """Where a field's error is reported: at its key, or at its section when that is no mapping."""
    return (*path, name) if isinstance(section, dict) else path


def risk_warnings(data: dict[str, Any]) -> tuple[list[tuple[YamlPath, str]], list[tuple[YamlPath, str]]]:
    """Legal but risky settings, on the YAML as loaded (credentials read in): (warnings as
    (key path, what to consider), waiting as (key path with an error, the warning it holds up))."""
    out: list[tuple[YamlPath, str]] = []
    waiting: list[tuple[YamlPath, str]] = []
    if data.get("simulation") is not None:
        out.append((("simulation",), "a simulated clock: for `gated sim day` only; `gated run` refuses it without GATED_SIMULATION=1"))
    gates = data.get("gates")
    if gates is not None and not isinstance(gates, list):
        waiting.append((("gates",), "the gates' warnings (an escape route that locks, a gate without a reader)"))
    for i, g in enumerate(gates if isinstance(gates, list) else []):
        here: YamlPath = ("gates", i)
        if not isinstance(g, dict):
            waiting.append((here, "this gate's warnings (an escape route that locks, no reader)"))
            continue
        gid = g.get("id") if isinstance(g.get("id"), str) else dotted(here)
        direction, escape = _field(GateConfig, g, "direction"), _field(GateConfig, g, "escape_route")
        output = g.get("output")
        mode = None if output is None else _field(ModbusOutputConfig, output, "mode")
        secure = UNKNOWN if mode is UNKNOWN else mode == DoorMode.FAIL_SECURE
        on_route = (True if escape is True or direction == "out"
                    else False if escape is False and direction == "in" else UNKNOWN)
        if secure is True and on_route is True:
            out.append((
                (*here, "output", "mode"),
                f"gate {gid} is on an escape route (escape_route: true, or an exit) but fail_secure: it "
                "stays locked on a fire alarm or power cut",
            ))
        elif secure is not False and on_route is not False:
            held = [_key((*here, "output"), output, "mode")] if secure is UNKNOWN else []
            held += [(*here, k) for k, v in (("escape_route", escape), ("direction", direction))
                     if on_route is UNKNOWN and v is UNKNOWN]
            waiting += [(q, "a fail-secure door on an escape route") for q in held]
        readers = g.get("readers", [])
        if direction != "out" and not isinstance(readers, list):
            waiting.append(((*here, "readers"), "a gate without a reader"))
        elif isinstance(readers, list) and not readers:
            if direction == "in":
                out.append(((*here, "readers"), f"gate {gid} has no reader: only overrides can open it"))
            elif direction is UNKNOWN:
                waiting.append(((*here, "direction"), "a gate without a reader"))
    sc = data.get("stale_cache", {})
    policy, max_age = _field(StaleCacheConfig, sc, "policy"), _field(StaleCacheConfig, sc, "max_age")
    # without `mqtt` nothing goes stale (Daemon.cache_stale): the seed is all there is. With
    # it, no max_age is never stale whatever the policy; a long one is under `keep`
    long_age = max_age is not UNKNOWN and max_age is not None and parse_duration(max_age) > timedelta(days=7)
    if data.get("mqtt") is None:
        pass
    elif max_age is None or (long_age and policy == "keep"):
        out.append((("stale_cache",), "a cache that is never considered stale keeps letting in members whose passes were cancelled centrally"))
    elif max_age is UNKNOWN or (long_age and policy is UNKNOWN):
        held = [_key(("stale_cache",), sc, k) for k, v in (("policy", policy), ("max_age", max_age)) if v is UNKNOWN]
        waiting += [(q, "a cache that is never stale") for q in dict.fromkeys(held)]
    console = data.get("console", {})
    enabled = _field(ConsoleConfig, console, "enabled")
    bind, tls = _field(ConsoleConfig, console, "bind"), _field(ConsoleConfig, console, "tls_cert")
    beyond = UNKNOWN if bind is UNKNOWN else bind not in LOOPBACK
    if enabled is True and beyond is True and tls is None:
        out.append((("console", "bind"), "the console listens beyond loopback without TLS: passwords cross the LAN in clear"))
    elif enabled is not False and beyond is not False and (tls is None or tls is UNKNOWN):
        held = [_key(("console",), console, k) for k, v in (("enabled", enabled), ("bind", bind), ("tls_cert", tls))
                if v is UNKNOWN]
        waiting += [(q, "a console on the LAN without TLS") for q in dict.fromkeys(held)]
    users = console.get("users", []) if isinstance(console, dict) else UNKNOWN
    if enabled is True and users == []:
        out.append((("console", "users"), "no console users: nobody can log in to the front-desk console"))
    elif enabled is UNKNOWN and users == []:
        waiting.append((_key(("console",), console, "enabled"), "a console without users"))
    if data.get("mqtt") is None:
        out.append((("mqtt",), "no MQTT link: events stay in the outbox; members, passes and bookings are what `gated seed` last "
                    "loaded (seed again to change them; stale_cache does not apply)"))
    qr = data.get("qr", {})
    keys = _field(QrConfig, qr, "public_keys")
    if keys is UNKNOWN:
        waiting.append((_key(("qr",), qr, "public_keys"), "no trusted QR keys"))
    elif not keys:
        out.append((("qr", "public_keys"), "no trusted QR keys: every QR code is denied as invalid_qr"))
    return out, waiting
