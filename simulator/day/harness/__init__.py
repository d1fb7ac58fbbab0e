"""What runs the simulated day: the chain's processes (procs.py: brokers, the WAN link,
`gated run` daemons, the central system's process) wired on one simulated clock (rig.py),
the central system as a process with its control socket (central_proc.py), the people at
the turnstiles (traffic.py) and the front desk over the console's HTTP API (desk.py), the
faults (chaos.py), and a daemon under tracemalloc for `--trace-memory` (traced.py).

`python -m` entry points started as subprocesses: simulator.day.harness.central_proc and
simulator.day.harness.traced (the daemons themselves: `python -m gated.cli run`)."""
