"""`gated sim day`: the simulated chain's processes (procs.py, rig.py), its people
(traffic.py) and faults (chaos.py), the run and its report (run.py). The day's data and
the invariants are in simulator/day/."""
