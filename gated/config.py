"""The installer's YAML file, as pydantic models: one file describes a whole site.

`gated check-config FILE` reports every error at once with its line; `gated schema` gives
the JSON Schema editors use to check the file as it is typed.

One module of ~600 lines, on purpose: the sections are the file's schema, in the file's
order, each with the descriptions `gated schema` publishes; an installer (or a newcomer)
reads it top to bottom as the YAML is written. The checks across sections live in
gated/config_checks.py, the risk warnings in gated/config_risks.py, the drivers' own
sections in drivers/*/config.py.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from drivers.outputs.config import FireAlarmInputConfig, ModbusOutputConfig
from drivers.readers.config import ReaderConfig
from drivers.readers.payloads import PayloadFormat
from gated import config_checks
from gated.credentials import KINDS as CREDENTIAL_KINDS
from gated.credentials import NAME as CREDENTIAL_NAME
from gated.credentials import Credentials
from gated.credentials import resolve as resolve_credentials
from gated.yamlload import Marked, YamlError, describe_error, dotted, error_path, load, read_text
from gated.yamlload import Path as YamlPath
from rules.credential import TenDigits
from rules.model import AntiPassback, Direction, EarlyEntry, Gate, Policy, Site
from rules.timeutil import WeekSchedule, load_zone, parse_date, parse_duration, parse_window
from sync.link.settings import MqttSettings

Duration = Annotated[
    str,
    AfterValidator(lambda v: (parse_duration(v), v)[1]),
    Field(description="A duration: 90s, 15m, 3h, 2d (or a sum such as 1h30m)."),
]


def _check_schedule(v: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
    WeekSchedule.parse(v)
    return v


Schedule = Annotated[
    dict[str, str | list[str]],
    AfterValidator(_check_schedule),
    Field(
        description='Windows per day: keys mon..sun or ranges (mon-fri), values "HH:MM-HH:MM" '
        "or a list of them; an end before the start runs past midnight."
    ),
]
Ident = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]
Name = Annotated[str, Field(min_length=1, max_length=200)]  # any text: gate and zone names as the gym writes them


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteConfig(Section):
    id: Ident = Field(description="Short id of the site, used in MQTT topics and events.")
    name: str = Field("", description="Human name of the site, shown in the console.")
    timezone: str = Field(description="IANA timezone of the site, e.g. Europe/Madrid.")
    opening_hours: Schedule | None = Field(None, description="When the site is open; absent = always.")
    closed_dates: list[date] = Field([], description="Local dates the site is closed all day.")

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, v: str) -> str:
        try:
            load_zone(v)
        except ValueError as e:
            close = config_checks.close_timezones(v)
            hint = f" (did you mean {' or '.join(repr(z) for z in close)}?)" if close else " (an IANA name such as Europe/Madrid)"
            raise ValueError(f"{e}{hint}") from None
        return v


class PolicyConfig(Section):
    early_entry: Literal["strict", "link"] = Field(
        "strict",
        description="strict: arriving before a booking's arrival window is a walk-in; link: an "
        "early arrival the same day within link_window is matched to the booking.",
    )
    link_window: Duration = "120m"
    no_show_after: Duration = Field("15m", description="A booking still open this long after its end is a no-show.")
    no_show_fee: Decimal = Field(Decimal(0), ge=0, allow_inf_nan=False, description="Taken for a no-show on deduct-at-access passes.")
    loyalty_delay: Duration = Field("3h", description="Points are credited this long after an attended class ends.")

    def to_domain(self) -> Policy:
        return Policy(
            early_entry=EarlyEntry(self.early_entry),
            link_window=parse_duration(self.link_window),
            no_show_after=parse_duration(self.no_show_after),
            no_show_fee=self.no_show_fee,
            loyalty_delay=parse_duration(self.loyalty_delay),
        )


class StaleCacheConfig(Section):
    max_age: Duration | None = Field(
        "24h",
        description="How long the cache may go without a successful sync before `policy` applies; "
        "null = never (warned).",
    )
    policy: Literal["keep", "bookings_and_time_passes", "deny"] = Field(
        "bookings_and_time_passes",
        description="keep: go on deciding from the cache; bookings_and_time_passes: only bookings, "
        "re-entries, exits and time passes; deny: deny every entry (exits always work).",
    )


class GateRules(Section):
    """What the rules need to know about a gate (shared with scenario files)."""

    id: Name
    zone: Name = Field(description="The area this gate leads into (or out of).")
    direction: Literal["in", "out"] = "in"
    early_arrival: Duration = Field("15m", description="Arrival window opens this long before a class.")
    late_arrival: Duration = Field("10m", description="Arrival window closes this long after the start.")
    anti_passback: Literal["none", "soft", "hard"] = "none"
    reentry_grace: Duration = Field("0m", description="A member who just came in may come in again free within this.")

    def to_domain(self) -> Gate:
        return Gate(
            id=self.id,
            zone=self.zone,
            direction=Direction(self.direction),
            early_arrival=parse_duration(self.early_arrival),
            late_arrival=parse_duration(self.late_arrival),
            anti_passback=AntiPassback(self.anti_passback),
            reentry_grace=parse_duration(self.reentry_grace),
        )


class GateConfig(GateRules):
    name: str = ""
    escape_route: bool = Field(False, description="This door is on an escape route (must be fail_safe).")
    readers: list[ReaderConfig] = Field([], description="Readers at this gate.")
    output: ModbusOutputConfig | None = Field(
        None, description="The relay or turnstile controller; absent = no lock (taps are only recorded)."
    )


class ZoneConfig(Section):
    capacity: int | None = Field(None, ge=1, description="Most people inside at once; full = deny with site_full.")


class StoreConfig(Section):
    path: Path = Field(Path("/var/lib/gated/gated.db"), description="The SQLite database (created if missing).")
    min_free_mb: float = Field(
        8.0,
        ge=0,
        le=1_000_000,
        description="Free space (MiB) kept in reserve on the database's file system: below it, "
        "entries are refused with storage_fault so that grants under way, denials and exits "
        "can still be recorded.",
    )
    backup_interval: Duration | None = Field(
        "24h",
        description="How often the daemon writes a consistent copy of the database to "
        "`<path>.backup` (online, without stopping taps); null = never.",
    )
    max_held_exits: int = Field(
        1000,
        ge=0,
        le=1_000_000,
        description="During a storage fault exits still open, and the ones that could not be written "
        "are kept in memory until the store works again: at most this many. Beyond it an exit is only "
        "counted by gate, and the counts are reported in one alarm (exits_not_recorded). Entries are "
        "refused during a fault; the few held are never dropped.",
    )
    exits_file: Path | None = Field(
        None,
        description="A small file outside the store where the exits held or counted during a storage fault "
        "are mirrored, so that a restart of the daemon before the store works again still reports them "
        "(exits_not_recorded). Keep it off the store's file system (a tmpfs); null = beside the control "
        "socket (/run/gated/exits-not-recorded.json).",
    )
    retention: Duration | None = Field(
        "90d",
        description="How long the ledger keeps passages, deductions and the other daemons' charges "
        "that the central system has (acknowledged, and applied to the pass's balance): older ones "
        "are deleted, a few at a time, once an hour. At least 7d (the rules look back a day); "
        "null = keep everything.",
    )
    audit_retention: Duration | None = Field(
        "400d",
        description="How long the ledger keeps the audit log of operators' actions; at least 30d; "
        "null = keep everything.",
    )
    integrity_interval: Duration | None = Field(
        "1h",
        description="How often the daemon reads every page of the database (SQLite's quick_check, "
        "in a worker thread: taps go on); damage found is a storage fault: entries refused, an "
        "alarm. null = never (a damaged page is then seen only when a tap or a write reads it).",
    )

    @field_validator("retention", "audit_retention")
    @classmethod
    def _long_enough(cls, v: str | None, info: ValidationInfo) -> str | None:
        least = {"retention": timedelta(days=7), "audit_retention": timedelta(days=30)}[str(info.field_name)]
        if v is not None and parse_duration(v) < least:
            raise ValueError(f"at least {least.days}d: the rules and the desk read that far back")
        return v

    def retention_periods(self) -> tuple[timedelta | None, timedelta | None]:
        """(retention, audit_retention) as durations; None: kept for ever."""
        return (parse_duration(self.retention) if self.retention else None,
                parse_duration(self.audit_retention) if self.audit_retention else None)


ARGON2_HASH = re.compile(r"^\$argon2(id|i|d)\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]{8,}\$[A-Za-z0-9+/]{16,}$")


# what to do about a password hash that is not one, said with each of its errors
WRITE_A_HASH = ("write one with `gated hash-password --out /etc/gated/credentials/NAME` and give it "
                "here as `{credential: NAME}` (or paste the output of `gated hash-password` here)")


class ConsoleUser(Section):
    name: Ident
    role: Literal["staff", "admin"] = "staff"
    password_hash: str = Field(
        description="argon2 hash from `gated hash-password`; never the password itself. Or "
        "`{credential: NAME}`: the hash in /etc/gated/credentials/NAME (a systemd credential), "
        "written by `gated hash-password --out /etc/gated/credentials/NAME`.",
        min_length=20,
    )

    # before the type's own checks: its length check ("at least 20 characters (got '')") would
    # otherwise answer an empty hash or a placeholder first, and say nothing of what to do
    @field_validator("password_hash", mode="before")
    @classmethod
    def _a_hash(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        if not v.strip():
            raise ValueError(f"empty: no hash was written (a failed `gated hash-password`?): {WRITE_A_HASH}")
        if "REPLACE" in v.upper():
            raise ValueError(f"a placeholder, not a hash: {WRITE_A_HASH}")
        if not ARGON2_HASH.fullmatch(v.strip()):
            raise ValueError(f"not an argon2 hash (never the password itself): {WRITE_A_HASH}")
        return v.strip()


class DisplayConfig(Section):
    """A member-facing screen at a gate (a tablet on the turnstile): read-only, no login."""

    id: Ident = Field(description="Names the display in its URL: /display/ID?token=...")
    gate: Name = Field(description="The gate whose taps it shows.")
    token: str = Field(
        min_length=24, max_length=200, pattern=r"^[A-Za-z0-9_-]+$",
        description="A long random secret in the display's URL (e.g. `python3 -c 'import secrets; "
        "print(secrets.token_urlsafe(24))'`): whoever has it sees that gate's answers.",
    )
    clear_after: int = Field(6, ge=2, le=60, description="Seconds an answer stays on screen.")


class UnknownCardsConfig(Section):
    """Unknown cards in a flood (docs/reliability.md, "Floods"): the first `individual` per
    gate in any `window` are recorded one by one (`access`, with the card, for the desk to
    enrol); the rest as one `unknown_cards` event per burst."""

    individual: int = Field(10, ge=1, le=100_000, description="Unknown cards per gate recorded one by one in any window.")
    window: float = Field(60.0, gt=0, le=3600, description="Seconds of that window; also the longest a burst goes unrecorded.")
    quiet: float = Field(5.0, gt=0, le=600, description="Seconds without an unknown card that end a burst (and record it).")


class ConsoleLimits(Section):
    """What one client, or a flood of them, may take of the console (docs/reliability.md,
    "Floods"): the gates, relays and control socket come first."""

    max_connections: int = Field(64, ge=1, le=10_000, description="Open console connections at most; more get a 503.")
    per_client: int = Field(16, ge=1, le=10_000, description="Open connections from one address at most.")
    header_timeout: float = Field(10.0, gt=0, le=300, description="Seconds a client has to send a request's headers (and a TLS handshake).")
    body_timeout: float = Field(30.0, gt=0, le=600, description="Seconds a client has to send a request's body after its headers.")
    keep_alive: int = Field(5, ge=1, le=300, description="Seconds an idle keep-alive connection stays open.")
    fd_reserve: int = Field(
        64, ge=8, le=100_000,
        description="File descriptors kept free for the relays, readers, store, MQTT and control socket: "
        "no console connection is accepted within this many of the process's limit (LimitNOFILE).",
    )


class ConsoleConfig(Section):
    enabled: bool = True
    bind: str = Field("127.0.0.1", description="Address to listen on; loopback unless TLS is set up.")
    port: int = Field(8080, ge=1, le=65535)
    users: list[ConsoleUser] = []
    session_minutes: int = Field(480, ge=5, le=24 * 60)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    trusted_hosts: list[str] = Field(
        [],
        description="Host names the console answers to (the Host header; DNS rebinding). Loopback names "
        "and the bind address are always allowed; add the names the desk types, e.g. gate-1.gym.lan.",
    )
    displays: list[DisplayConfig] = Field([], description="Member-facing gate displays.")
    limits: ConsoleLimits = ConsoleLimits()

    def allowed_hosts(self) -> list[str]:
        return list(dict.fromkeys(["127.0.0.1", "localhost", "::1", "[::1]", self.bind, *self.trusted_hosts]))


class QrConfig(Section):
    public_keys: list[str] = Field([], description="Trusted Ed25519 public keys (from `gated qr keygen`).")


class LoggingConfig(Section):
    format: Literal["auto", "json", "console"] = Field("auto", description="auto: console on a terminal, else JSON.")
    level: Literal["debug", "info", "warning", "error"] = "info"
    libraries: Literal["debug", "info", "warning", "error"] = Field(
        "warning",
        description="Level for the libraries' own logs (pymodbus frames, MQTT client): "
        "`debug` to see every Modbus frame while wiring.",
    )


class MetricsConfig(Section):
    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = Field(9108, ge=1, le=65535)


class ControlConfig(Section):
    socket: Path = Field(Path("/run/gated/control.sock"), description="Unix socket for `gated tap`, `gated open`.")
    injected_reads: bool = Field(
        False,
        description="Accept `gated tap` (a card or QR read sent through the socket as if a reader had read "
        "it). Off in production: it opens doors without a password. The demo and tests turn it on.",
    )


class SimulationConfig(Section):
    """For `gated sim day` only: a simulated clock shared by a whole simulated site."""

    clock_start: datetime = Field(description="The simulated instant at `clock_epoch` (ISO 8601 with an offset).")
    clock_speed: float = Field(60.0, gt=0, le=10_000, description="Simulated seconds per real second.")
    clock_epoch: float = Field(description="The real instant (Unix seconds) the simulated clock started at.")

    @field_validator("clock_start")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("give the start with its UTC offset")
        return v


class Config(Section):
    site: SiteConfig
    daemon_id: Ident = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "gate")
    policy: PolicyConfig = PolicyConfig()
    stale_cache: StaleCacheConfig = StaleCacheConfig()
    zones: dict[str, ZoneConfig] = {}
    gates: list[GateConfig] = Field(min_length=1)
    fire_alarm: FireAlarmInputConfig | None = None
    mqtt: MqttSettings | None = None
    store: StoreConfig = StoreConfig()
    console: ConsoleConfig = ConsoleConfig()
    qr: QrConfig = QrConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    control: ControlConfig = ControlConfig()
    lookup_unknown_cards: bool = Field(True, description="Ask the central system about unknown cards before denying.")
    unknown_cards: UnknownCardsConfig = UnknownCardsConfig()
    time_driven_work: bool = Field(
        True,
        description="This daemon finalises the site's no-shows (and their fees) and credits loyalty "
        "points. On a site with several daemons exactly one does it (the others: false); it learns "
        "what the others' gates and desks recorded from their events, and begins where the one that "
        "did it before said it had settled; while another says it does it, only the first goes on "
        "(alarm two_workers) (docs/operations.md).",
    )
    peer_wait_limit: Duration = Field(
        "1h",
        description="With time_driven_work on a site with several daemons: how long past a class's "
        "no-show time to wait for another daemon that is not heard (it may have taken the attendance) "
        "before settling the no-show without it; the no-show then names it (`unheard`).",
    )
    simulation: SimulationConfig | None = Field(
        None,
        description="Simulator only (`gated sim day`): a simulated clock. `gated run` refuses it "
        "unless GATED_SIMULATION=1 is set too: never on a real site.",
    )

    @model_validator(mode="before")
    @classmethod
    def _mqtt_defaults(cls, data: Any) -> Any:
        # the MQTT identity is the site's and the daemon's: don't make installers repeat it
        if isinstance(data, dict) and isinstance(data.get("mqtt"), dict) and isinstance(data.get("site"), dict):
            mqtt = dict(data["mqtt"])
            mqtt.setdefault("site", data["site"].get("id"))
            if data.get("daemon_id"):
                mqtt.setdefault("daemon", data["daemon_id"])
            else:
                mqtt.setdefault("daemon", socket.gethostname().split(".")[0] or "gate")
            data = {**data, "mqtt": mqtt}
        return data

    @model_validator(mode="after")
    def _displays(self) -> Config:
        gates = {g.id for g in self.gates}
        ids: set[str] = set()
        for d in self.console.displays:
            if d.gate not in gates:
                raise ValueError(f"display {d.id!r} names gate {d.gate!r}, which is not configured")
            if d.id in ids:
                raise ValueError(f"display id {d.id!r} repeats")
            ids.add(d.id)
        return self

    @model_validator(mode="after")
    def _unique_ids(self) -> Config:
        seen: set[str] = set()
        readers: set[str] = set()
        for g in self.gates:
            if g.id in seen:
                raise ValueError(f"gate id {g.id!r} repeats")
            seen.add(g.id)
            for r in g.readers:
                rid = str(r.id)
                if rid in readers:
                    raise ValueError(f"reader id {rid!r} repeats")
                readers.add(rid)
        return self

    def site_domain(self) -> Site:
        s = self.site
        return Site(
            timezone=load_zone(s.timezone),
            opening_hours=WeekSchedule.parse(s.opening_hours) if s.opening_hours is not None else None,
            closed_dates=frozenset(s.closed_dates),
            id=s.id,
        )

    def peer_wait_limit_delta(self) -> timedelta:
        return parse_duration(self.peer_wait_limit)

    def gates_domain(self) -> dict[str, Gate]:
        return {g.id: g.to_domain() for g in self.gates}

    def ten_digits(self) -> TenDigits:
        """How this site reads untyped card strings of 10 decimal digits (stored before
        typed cards, or sent by a central system that predates them): the EM4100 id of a
        hex reader when the site's EM readers are all hex ones, else the card number of a
        decimal reader (rules.credential.card_from_text)."""
        hex_em, decimal_em = _em_reader_kinds(self)
        return TenDigits.EM if hex_em and not decimal_em else TenDigits.EM32

    def warnings(self) -> list[tuple[str, str]]:
        """Legal but risky settings: (key path, what to consider)."""
        return [(dotted(path), msg) for path, msg in self.warning_paths()]

    def warning_paths(self) -> list[tuple[YamlPath, str]]:
        return self.model_warnings() + config_checks.warnings(self.model_dump(mode="json"))

    def model_warnings(self) -> list[tuple[YamlPath, str]]:
        """The warnings that need values as the models read them (config_checks.warnings
        has those that the YAML as written shows)."""
        from gated.config_risks import risk_warnings  # it reads the sections defined here

        return risk_warnings(self.model_dump(mode="json"))[0]


def _em_reader_kinds(config: Config) -> tuple[bool, bool]:
    """(a reader sends EM4100 ids in hex, a reader sends EM4100 numbers in decimal)."""
    hex_em = decimal_em = False
    for g in config.gates:
        for r in g.readers:
            fmt = getattr(r, "format", None)
            if fmt == PayloadFormat.AUTO:
                fmt = getattr(r, "card_format", None)
            hex_em |= fmt in (PayloadFormat.HEX, PayloadFormat.EM)
            decimal_em |= fmt in (PayloadFormat.DECIMAL, PayloadFormat.EM_DECIMAL)
    return hex_em, decimal_em


class ConfigError(Exception):
    def __init__(self, problems: list[tuple[int | None, str, str]], path: str):
        self.problems = problems  # (line, key path, message)
        self.path = path
        super().__init__("; ".join(f"{path}:{ln or '?'}: {k}: {m}" for ln, k, m in problems))


def _problems(e: ValidationError, marked: Marked) -> list[tuple[int | None, str, str]]:
    out = [_suggest(err, marked) for err in e.errors()]
    # a discriminated union reports the same spot several times; keep each once
    return list(dict.fromkeys(out))


def _suggest(err: ErrorDetails, marked: Marked) -> tuple[int | None, str, str]:
    """One error as (line, key, message), an unknown key with the known key it is closest to.

    The path is the error's own (keys and indexes as written), not its dotted text read
    back: a key may be any YAML scalar, "a.b" or "²" among them.
    """
    line, key, msg = describe_error(err, marked)
    if err["type"] != "extra_forbidden":
        return line, key, msg
    close = config_checks.did_you_mean(Config, error_path(err, marked), marked.data)
    return (line, key, f"{msg} (did you mean {close!r}?)") if close else (line, key, msg)


@dataclass
class Report:
    """What `gated check-config` says about a file: errors and warnings as (line, key,
    message), the warnings that wait for an error to be fixed as (line, key with the error,
    the warning), and the configuration when it has no error."""

    path: str
    errors: list[tuple[int | None, str, str]] = field(default_factory=list)
    warnings: list[tuple[int | None, str, str]] = field(default_factory=list)
    waiting: list[tuple[int | None, str, str]] = field(default_factory=list)
    config: Config | None = None


def check_config(path: str | Path, env: Mapping[str, str] | None = None) -> Report:
    """Every problem of the file in one pass: the models' errors, the checks across
    sections, the credentials, and the warnings (with their lines even while errors remain;
    the few that depend on a value with an error are named in `waiting`)."""
    p = Path(path)
    report = Report(str(p))
    try:
        text = read_text(p)
    except (OSError, UnicodeDecodeError) as e:
        report.errors.append((None, "(file)", f"cannot read: {e}"))
        return report
    except YamlError as e:
        report.errors.append((e.line, "(file)", e.message))
        return report
    try:
        marked = load(text)
    except YamlError as e:
        report.errors.append((e.line, e.key or "(yaml)", e.message))
        return report
    if marked.data is None:
        report.errors.append((1, "(top)", "the file has no settings (every line a comment?): start from an example, "
                                          "e.g. cp /usr/share/gated/examples/turnstile-serial-tcp.yaml " + str(p)))
        return report
    if not isinstance(marked.data, dict):
        report.errors.append((1, "(top)", "the configuration is a mapping with site, gates, ..."))
        return report

    def at(path: YamlPath, msg: str) -> tuple[int | None, str, str]:
        return (marked.line_of(path), dotted(path), msg)

    # what the YAML as written shows, before the credentials are read into it
    raw_warnings = config_checks.warnings(marked.data)
    creds = Credentials.for_config(p, os.environ if env is None else env)
    unresolved = resolve_credentials(marked.data, creds)
    checks = [at(q, m) for q, m in unresolved]
    # a reference that could not be read is its own error, not also "not a string" (at the
    # key or, where a model reports it higher up, on the reference's lines)
    hidden = [dotted(q[:-1] if q[-1] == "credential" else q) for q, _ in unresolved]
    hidden_lines = {marked.line_of(q) for q, _ in unresolved} | {marked.line_of(q[:-1]) for q, _ in unresolved}
    # The checks across sections run on the YAML as loaded, so they report together with
    # the models' errors (one pass), and the models' unknown keys get a "did you mean".
    checks += [at(q, m) for q, m in config_checks.problems(marked.data)]
    report.warnings = [at(q, m) for q, m in raw_warnings + creds.warnings]
    try:
        config = Config.model_validate(marked.data)
    except ValidationError as e:
        found = [q for q in _problems(e, marked)
                 if q[0] not in hidden_lines and not any(q[1] == h or q[1].startswith((h + ".", h + "[")) for h in hidden)]
        seen = {msg for _, _, msg in checks}
        report.errors = sorted([q for q in found if q[2] not in seen] + checks, key=lambda q: q[0] or 0)
        # no Config to read the warnings from: each from the fields it needs (risk_warnings)
        from gated.config_risks import risk_warnings

        found_warnings, waiting = risk_warnings(marked.data)
        report.warnings += [at(q, m) for q, m in found_warnings]
        held: dict[tuple[int | None, str], list[str]] = {}
        for q, what in waiting:
            line, key, _ = at(q, what)
            held.setdefault((line, key), []).append(what)
        report.waiting = [(line, key, "; ".join(dict.fromkeys(whats))) for (line, key), whats in held.items()]
    else:
        report.errors = checks
        report.warnings += [at(q, m) for q, m in config.model_warnings()]
        if not checks:
            report.config = config
    report.warnings.sort(key=lambda q: q[0] or 0)
    return report


def load_config(path: str | Path) -> Config:
    report = check_config(path)
    if report.errors or report.config is None:
        raise ConfigError(report.errors, report.path)
    return report.config


CREDENTIAL_SCHEMA = {
    "type": "object",
    "title": "Credential",
    "description": "A secret in a file the unit loads as a systemd credential: "
    "/etc/gated/credentials/NAME (LoadCredential=), or one named in a drop-in "
    "(LoadCredential=NAME:… / LoadCredentialEncrypted=NAME:…). Read from $CREDENTIALS_DIRECTORY.",
    "properties": {"credential": {"type": "string", "pattern": CREDENTIAL_NAME.pattern}},
    "required": ["credential"],
    "additionalProperties": False,
}


def json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gated configuration"
    schema["$defs"]["Credential"] = CREDENTIAL_SCHEMA
    ref = {"$ref": "#/$defs/Credential"}
    # wherever a secret goes, `{credential: NAME}` may stand instead (gated/credentials.py)
    for model in [schema, *schema["$defs"].values()]:
        for key, prop in model.get("properties", {}).items():
            if key not in CREDENTIAL_KINDS:
                continue
            if prop.get("type") == "array":
                prop["items"] = {"anyOf": [prop["items"], ref]}
            model["properties"][key] = {"anyOf": [{k: v for k, v in prop.items() if k not in ("description", "title", "default")}, ref],
                                        **{k: prop[k] for k in ("description", "title", "default") if k in prop}}
    return schema


__all__ = ["Config", "ConfigError", "Report", "check_config", "json_schema", "load_config", "parse_date", "parse_window"]
