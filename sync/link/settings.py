"""How a daemon (or the reference central system) reaches its brokers: pydantic settings
only. Kept apart from the link so that reading a configuration file does not import the
MQTT client (aiomqtt, paho)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from sync.topics import valid_level

DEFAULT_PORT = 1883


def parse_endpoint(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address → (host, port)."""
    text = text.strip()
    if not text:
        raise ValueError("an empty broker address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise ValueError(f"{text!r}: an IPv6 address in [] without its closing ]")
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected :PORT after ]")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # a host name, an IPv4 address or a bare IPv6 address
        return text, default_port
    if not host:
        raise ValueError(f"{text!r}: no host")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def _check_endpoint(v: str) -> str:
    parse_endpoint(v)
    return v


Endpoint = Annotated[str, Field(min_length=1, max_length=300)]


class BrokerSettings(BaseModel):
    """The broker connection, the same for a gate and for the reference central system."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="The broker (when `hosts` is not given).")
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="The broker's port (and the default port in `hosts`).")
    hosts: list[Endpoint] = Field(
        [],
        max_length=16,
        description="Several brokers, tried in order (a cluster's nodes, or a primary and a "
        "standby): `host` or `host:port`. After a lost connection the first is tried again.",
    )
    tls: bool = Field(False, description="TLS with the system's CA certificates (implied by ca_file).")
    ca_file: Path | None = Field(None, description="CA certificate(s) the broker's certificate is checked against.")
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="The client certificate's private key.")
    tls_insecure: bool = Field(False, description="Do not check the broker's host name (never in production).")
    username: str | None = None
    password: SecretStr | None = None
    prefix: str = Field("gated", description="Topic prefix; may contain '/'.")
    keepalive: int = Field(30, ge=5, le=3600, description="MQTT keep-alive, seconds.")
    connect_timeout: float = Field(
        10.0, gt=0, le=300, description="Longest wait for the broker to accept a connection or acknowledge a message, seconds."
    )
    backoff_initial: float = Field(0.1, gt=0, description="First wait before reconnecting, seconds.")
    backoff_max: float = Field(
        1.0, gt=0, description="Longest wait between rounds of connection attempts while a broker is down, seconds."
    )
    backoff_refused: float = Field(
        30.0, gt=0, description="Wait after every broker refused the connection (credentials, ACL), seconds."
    )

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for h in v:
            _check_endpoint(h)
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "+#\0") or v.startswith("/") or v.endswith("/") or v.startswith("$"):
            raise ValueError("a topic prefix without wildcards, leading '$' or '/' at either end")
        return v

    def endpoints(self) -> list[tuple[str, int]]:
        """The brokers to try, in order."""
        if self.hosts:
            return [parse_endpoint(h, self.port) for h in self.hosts]
        return [(self.host, self.port)]

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.tls or self.ca_file):
            return None
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        if self.tls_insecure:
            ctx.check_hostname = False
        return ctx


class MqttSettings(BrokerSettings):
    """A gate daemon's link: who it is and how it paces the protocol. Durations in seconds."""

    site: str
    daemon: str
    lookup_timeout: float = Field(
        0.3, gt=0, description="Longest wait for a live look-up of an unknown card before deciding."
    )
    reconcile_interval: float = Field(1800.0, gt=0, description="Ask for a resync this often (reconciliation).")
    ack_timeout: float = Field(10.0, gt=0, description="Resend unacknowledged events after this long without progress.")
    resync_retry: float = Field(60.0, gt=0, description="Ask again this often while waiting for a snapshot.")
    central_status_wait: float = Field(
        2.0,
        gt=0,
        description="After connecting, how long to wait for the central system's status before "
        "asking for a resync anyway.",
    )
    health_interval: float = Field(60.0, gt=0, description="Publish health this often.")
    max_payload: int = Field(4_000_000, ge=1024, description="Inbound messages above this size are dropped.")
    batch_events: int = Field(200, ge=1, le=10_000, description="Events per uplink message, at most.")
    snapshot_batch_rows: int = Field(
        500, ge=1, description="Accepted for older configurations and no longer used: each snapshot chunk is "
        "written in one transaction.",
    )
    snapshot_guard: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A snapshot with fewer members than (1 - this share) of the members held is "
        "not applied (alarm) unless the central system marks it a full replacement; 1 turns the guard off.",
    )
    share_access: bool = Field(
        True,
        description="Hear the site's other daemons: their events (site-wide anti-passback, occupancy, "
        "attendance, charges, used QR codes), their heartbeats and catch-up answers.",
    )
    qr_claim_wait: float = Field(
        0.15,
        ge=0,
        le=2,
        description="A QR entry waits this long (seconds) for another daemon of the site that used the "
        "same code at the same instant (both said so at once); one rule gives it to exactly one of "
        "them. Only when another daemon is online; 0 turns the wait off.",
    )
    uplink_alarm_after: float = Field(
        600.0,
        gt=0,
        description="Events waiting this long (seconds) without the central system's applied_seq moving "
        "is an alarm (`uplink_stalled`, with the reason) in `gated status`, the console and the metrics.",
    )
    twin_hold: float = Field(
        60.0,
        ge=4,
        le=3600,
        description="Another daemon seen under this daemon_id (a cloned SD card): this daemon's events are held "
        "until no sign of it has come for this long (seconds), and while they are, a connection the other "
        "took is tried again after a quarter of it.",
    )
    heartbeat_interval: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Republish this daemon's status this often: the site's other daemons learn how far "
        "it has got (its last seq) and notice a gap in its events within about this long.",
    )
    retain_acked: float = Field(
        604_800.0,
        ge=0,
        description="Acknowledged events are kept this long (seconds; default 7 days) for a central "
        "system that restores a backup and asks for a replay, then pruned.",
    )
    retain_acked_max: int = Field(
        200_000, ge=0, description="And at most this many acknowledged events (disk space)."
    )

    @field_validator("site", "daemon")
    @classmethod
    def _level(cls, v: str) -> str:
        if not valid_level(v):
            raise ValueError("letters, digits and _.:@- only, up to 100, not 'central'")
        return v

    def client_id(self) -> str:
        return f"gated-{self.site}-{self.daemon}"
