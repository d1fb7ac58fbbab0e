"""`gated check-config`: every problem of a file in one pass — the models' errors and the
checks across sections together — "did you mean", unstable device paths, one set of line
settings per RS-485 line, one purpose per coil and input, addresses that are no address."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gated.auth import hash_password
from gated.config import Config, ConfigError, check_config, load_config
from gated.config_checks import allowed_keys, did_you_mean

LINE = "/dev/serial/by-id/usb-FTDI_RS485-if00-port0"

MANY_PROBLEMS = f"""\
site: {{id: s, timezone: Europe/Madrid}}
gates:
  - id: in-1
    zone: main
    anti_passback: sometimes
    readers:
      - {{type: serial, id: r1, devise: /dev/ttyUSB0}}
    output:
      {{transport: rtu, device: {LINE}, baudrate: 9600, unit: 1, coil: 0, passage_input: 0}}
  - id: in-2
    zone: main
    readers:
      - {{type: serial, id: r2, device: {LINE}}}
    output:
      {{transport: rtu, device: {LINE}, baudrate: 19200, unit: 1, coil: 0, door_contact: 0}}
  - id: in-3
    zone: main
    output: {{transport: tcp, host: 192.168.1.300, coil: 0}}
fire_alarm: {{transport: rtu, device: {LINE}, unit: 1, input: 0}}
console: {{bind: 10.0.0.256}}
"""


def check(tmp: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp / "gated.yaml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "gated.cli", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_every_problem_in_one_pass_with_its_line(tmp_path: Path) -> None:
    out = check(tmp_path, MANY_PROBLEMS)
    assert out.returncode == 2
    lines = out.stdout.splitlines()

    def said(line: int, key: str, text: str) -> None:
        assert any(f":{line}: error: {key}: " in x and text in x for x in lines), (line, key, text, lines)

    said(5, "gates[0].anti_passback", "none")  # a model error...
    said(7, "gates[0].readers[0].devise", "did you mean 'device'?")  # ...and its neighbours
    said(15, "gates[1].output.baudrate", "one set of line settings (baudrate 9600 there, 19200 here)")
    said(15, "gates[1].output.coil", "coil 0 of unit 1 on " + LINE + " is already gates[0].output's relay")
    said(15, "gates[1].output.door_contact", "input 0 of unit 1 on " + LINE + " is already gates[0].output.passage_input")
    said(13, "gates[1].readers[0].device", "is the Modbus RS-485 line of gates[0].output")
    said(18, "gates[2].output.host", "'192.168.1.300' is not a valid IP address")
    said(19, "fire_alarm.input", "already gates[0].output.passage_input")
    said(20, "console.bind", "'10.0.0.256' is not a valid IP address")
    errors = sum(": error: " in x for x in lines)
    warnings = sum(": warning: " in x for x in lines)
    assert lines[-1] == f"{errors} error(s), {warnings} warning(s)" and errors + warnings == len(lines) - 1
    # warnings are not held back while errors remain, and come with their lines, in file order
    assert any(re.search(r":13: warning: gates\[1\]\.readers\[0\]\.device: .* does not exist", x) for x in lines), lines
    numbers = [int(x.split(":")[1]) for x in lines[:-1]]
    assert numbers == sorted(numbers)
    assert "fire_alarm.baudrate" not in out.stdout  # 9600 written or by default is one setting


def test_warnings_for_unstable_paths_and_a_busy_line(tmp_path: Path) -> None:
    gates = "\n".join(
        f"  - {{id: g{u}, zone: main, readers: [{{type: serial, id: r{u}, device: /dev/ttyUSB{u}}}],\n"
        f"     output: {{transport: rtu, device: {LINE}, unit: {u}, coil: 0, passage_input: 0, poll_interval: 0.05}}}}"
        for u in (1, 2, 3)
    )
    out = check(tmp_path, f"site: {{id: s, timezone: Europe/Madrid}}\ngates:\n{gates}\n")
    assert out.returncode == 0, out.stdout
    assert "warning: gates[0].readers[0].device: /dev/ttyUSB1 is numbered in plug-in order" in out.stdout
    assert f"polling alone keeps {LINE} " in out.stdout and "busy at 9600 baud" in out.stdout


def test_a_good_rtu_line_shared_by_three_gates_passes(tmp_path: Path) -> None:
    gates = "\n".join(
        f"  - {{id: g{u}, zone: main, output: {{transport: rtu, device: {LINE}, unit: {u}, coil: 0, passage_input: 0}}}}"
        for u in (1, 2, 3)
    )
    out = check(tmp_path, f"site: {{id: s, timezone: Europe/Madrid}}\ngates:\n{gates}\n")
    assert out.returncode == 0 and "error" not in out.stdout and "busy" not in out.stdout, out.stdout


def _line_of(gates: int, **output: object) -> str:
    extra = "".join(f", {k}: {v}" for k, v in output.items())
    rows = "\n".join(
        f"  - {{id: g{u}, zone: main, output: {{transport: rtu, device: {LINE}, unit: {u}, coil: 0, "
        f"passage_input: 0, door_contact: 1{extra}}}}}"
        for u in range(1, gates + 1)
    )
    return f"site: {{id: s, timezone: Europe/Madrid}}\ngates:\n{rows}\n"


@pytest.mark.parametrize(
    "text,unseen",
    [
        # issue 22: three gates on a 9,600-baud line are sure to read 100 ms pulses (89.8 ms)
        (_line_of(3), None),
        # a fourth device on the line: 113.7 ms
        (_line_of(4), "carries 4 devices taking turns at 9600 baud: this gate's passage input is sure "
                      "to be read only in pulses of 114 ms or more, and the controller's passage pulse (passage_pulse) is 100 ms"),
        (_line_of(3) + f"fire_alarm: {{transport: rtu, device: {LINE}, unit: 9, input: 0}}\n", "carries 4 devices"),
        (_line_of(4, passage_pulse=0.2), None),  # the controller's pulse is long enough
        (_line_of(4, passage_counter=0), None),  # the board counts every pulse
        (_line_of(4, baudrate=19200), None),
        (_line_of(3, passage_poll_interval=0.05), "pulses of 120 ms or more"),  # the old pause
    ],
)
def test_a_line_that_cannot_promise_the_passage_pulse_is_a_warning(tmp_path: Path, text: str, unseen: str | None) -> None:
    out = check(tmp_path, text)
    assert out.returncode == 0, out.stdout
    if unseen is None:
        assert "passage input is sure" not in out.stdout, out.stdout
    else:
        assert "warning: gates[0].output.passage_input: " + LINE in out.stdout, out.stdout
        assert unseen in out.stdout and "passage_counter" in out.stdout, out.stdout


@pytest.mark.parametrize(
    "path,unknown,close",
    [
        ((), "gatez", "gates"),
        (("gates", 0), "zon", "zone"),
        (("gates", 0, "output"), "passage_imput", "passage_input"),
        (("gates", 0, "readers", 0), "scbk_fil", "scbk_file"),  # an OSDP reader's own keys
        (("fire_alarm",), "imput", "input"),
        (("gates", 0), "qqqqqq", None),
    ],
)
def test_did_you_mean(path: tuple[str | int, ...], unknown: str, close: str | None) -> None:
    data = {"gates": [{"readers": [{"type": "osdp"}], "output": {}}], "fire_alarm": {}}
    assert did_you_mean(Config, (*path, unknown), data) == close


def test_allowed_keys_follow_the_reader_type() -> None:
    data = {"gates": [{"readers": [{"type": "nfc"}]}]}
    keys = allowed_keys(Config, ("gates", 0, "readers", 0), data)
    assert keys is not None and "targets" in keys and "baudrate" not in keys


def test_load_config_refuses_what_check_config_refuses(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MANY_PROBLEMS.replace("anti_passback: sometimes", "anti_passback: none")
                    .replace("devise", "device"))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    keys = {k for _, k, _ in e.value.problems}
    assert "gates[2].output.host" in keys and "gates[1].output.coil" in keys


def test_a_duration_too_long_for_the_calendar_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """`99999999999d` overflowed Python's timedelta: `gated check-config` died with a
    traceback (exit 1) and `gated run` would have too. Now every duration has a bound."""
    out = check(tmp_path, "site: {id: s, timezone: Europe/Madrid}\ndaemon_id: d1\n"
                          "gates:\n  - {id: in, zone: main, early_arrival: 99999999999d}\n"
                          "store: {retention: 3661d}\n")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert ":4: error: gates[0].early_arrival: too long a duration: '99999999999d' (at most 3660d)" in out.stdout
    assert "store.retention: too long a duration" in out.stdout


# issue: the risk warnings appeared only once every error was fixed
RISKY_WITH_ERRORS = """\
site: {id: s, timezone: Europe/Madird}
gates:
  - id: in-1
    zone: main
    readers: [{type: serial, id: r1, device: /dev/null}]
    output: {transport: tcp, host: 127.0.0.1, coil: 0}
  - id: side-door
    zone: studio
    escape_route: true
    output: {transport: tcp, host: 127.0.0.1, coil: 0, mode: fail_secure}
console:
  users:
    - {name: desk, password_hash: {credential: desk.hash}}
"""
RISKS = [
    (10, "gates[1].output.mode", "gate side-door is on an escape route (escape_route: true, or an exit) but fail_secure"),
    (7, "gates[1].readers", "gate side-door has no reader: only overrides can open it"),
    (1, "mqtt", "no MQTT link"),
    (1, "qr.public_keys", "no trusted QR keys"),
]


def test_warnings_are_shown_with_the_errors(tmp_path: Path) -> None:
    """A missing credential, a misspelt timezone and a coil used twice: the risky settings
    of the same file are warned about in the same pass, each at its line."""
    out = check(tmp_path, RISKY_WITH_ERRORS)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for line, key, text in RISKS:
        assert any(x.startswith(f"{tmp_path / 'gated.yaml'}:{line}: warning: {key}: {text}") for x in lines), (key, lines)
    assert ":1: error: site.timezone: " in out.stdout and ":10: error: gates[1].output.coil: " in out.stdout
    assert ":13: error: console.users[0].password_hash.credential: credential 'desk.hash': no file" in out.stdout
    assert lines[-1] == "3 error(s), 4 warning(s)" and "waiting" not in out.stdout, lines


def test_the_warnings_shown_with_errors_are_those_once_fixed(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "desk.hash").write_text(hash_password("desk-password") + "\n")
    (creds / "desk.hash").chmod(0o600)
    fixed = RISKY_WITH_ERRORS.replace("Madird", "Madrid").replace("coil: 0, mode", "coil: 1, mode")
    with_errors = check_config(_written(tmp_path / "a.yaml", RISKY_WITH_ERRORS), env={})
    without = check_config(_written(tmp_path / "b.yaml", fixed), env={})
    assert without.errors == [] and without.config is not None and without.waiting == []
    assert with_errors.warnings == without.warnings and len(without.warnings) == 4


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_warning_that_depends_on_an_error_says_it_waits_for_it(tmp_path: Path) -> None:
    """What an error hides cannot be warned about (is a misspelt mode fail-secure?): the
    output says which warning waits for which error, beside it, and warns about the rest."""
    out = check(tmp_path, """\
site: {id: s, timezone: Europe/Madrid}
gates:
  - id: side-door
    zone: studio
    escape_route: true
    output: {transport: tcp, host: 127.0.0.1, coil: 0, mode: fail_secrue}
  - id: back
    zone: studio
    direction: sideways
stale_cache: {policy: keep, max_age: forever}
console: {bind: 0.0.0.0, enabled: maybe}
qr: {public_keys: {credential: qr-keys}}
mqtt: {host: 127.0.0.1}
""")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    wait = "warnings are checked once these errors are fixed"
    for line, key, what in [
        (6, "gates[0].output.mode", "a fail-secure door on an escape route"),
        (9, "gates[1].direction", "a gate without a reader"),
        (10, "stale_cache.max_age", "a cache that is never stale"),
        (11, "console.enabled", "a console on the LAN without TLS; a console without users"),
        (12, "qr.public_keys", "no trusted QR keys"),
    ]:
        said = [x for x in lines if f":{line}: " in x and f" {key}" in x]  # the error may be deeper: .credential
        assert any(": error: " in x for x in said) and any(x.endswith(f": waiting: {key}: {wait} ({what})") for x in said), \
            (key, lines)
    # known whatever the errors: the first gate has no reader
    assert any(":3: warning: gates[0].readers: gate side-door has no reader" in x for x in lines), lines
    assert "no MQTT link" not in out.stdout
    assert lines[-1] == "5 error(s), 1 warning(s); warnings waiting for 5 error(s) to be fixed", lines[-1]


def test_a_certificate_with_an_error_is_not_taken_for_no_certificate(tmp_path: Path) -> None:
    out = check(tmp_path, "site: {id: s, timezone: Europe/Madrid}\ngates: [{id: g, zone: z}]\n"
                          "console: {bind: 0.0.0.0, tls_cert: [1]}\n")
    assert out.returncode == 2 and "passwords cross the LAN in clear" not in out.stdout, out.stdout
    assert any(x.endswith(":3: waiting: console.tls_cert: warnings are checked once these errors are fixed "
                          "(a console on the LAN without TLS)") for x in out.stdout.splitlines()), out.stdout
