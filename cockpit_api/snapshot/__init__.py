"""`cockpit-api snapshot`: a deployment's state and behaviour, written as a scenario file
(take.py reads and writes; fit.py fits the charts and migration speeds)."""
