"""A day at a busy chain site, for `gated sim day` (docs/reliability.md, "A day at two
sites"): the population and its classes (population.py), the day's traffic and chaos as
data (plan.py), the invariants checked on what the day left behind (invariants.py, on the
run loaded by dayrun.py: the gates in check_gates.py, the books in check_books.py, the
grants decided again in check_grants.py) and the report (report.py). Everything here is
deterministic from a seed and does no I/O but reading files; the processes are driven by
gated/simday/."""
