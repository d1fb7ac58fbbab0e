"""A day at a two-site chain, for `gated sim day` and `make soak` (docs/reliability.md, "A
day at two sites"). Everything of the day is here:

- what it plans — deterministic from a seed, no I/O: the people, their passes and classes
  (population.py); the visits, extras and faults as data (plan.py);
- what runs it — harness/: the real processes (mosquitto brokers bridged over a WAN link
  that can be cut, `gated run` daemons, the reference central system in its own process),
  the people at the turnstiles and the desk, the faults at their instants;
- what it checks — checks/: the invariants on what the day left behind (the central's and
  every gate's databases, the turnstiles' counts, the harness's record) and the report;
  `gated sim day --check DIR` runs them alone on a finished run;
- the run itself (run.py: plan, harness, checks, report) and its arguments (args.py, all
  that `gated`'s parser loads); procfs.py samples the processes for the resources check.

The import rule (DESIGN.md: the simulator imports `rules` and `sync`, nothing imports
`gated`) holds here without exception: the harness drives the daemons from outside, as an
installer and a member would — `python -m gated.cli run` in a subprocess with a YAML
configuration and `GATED_SIMULATION=1`, the serial reader's pty, the turnstile's Modbus
server, MQTT, the console over HTTP, the daemons' JSON log lines. What both sides must
compute alike sits below both: the simulated clock's formula (rules.clock.SimulatedTime)
and a credential as logs show it (rules.credential.mask). tests/test_imports.py keeps it so.
"""
