"""What the simulated day is checked against, on what it left behind in its run directory
(nothing here trusts the code under test to say what is right): the run loaded once
(dayrun.py), the gates' records (gates.py: rotations, exactly once, balances, settled,
expected denials), the books (books.py: attendance, fees, refunds, loyalty), every grant
decided again with rules.decide (grants.py), all assembled with the harness's measures
(invariants.py: `check_run`) and rendered (report.py)."""
