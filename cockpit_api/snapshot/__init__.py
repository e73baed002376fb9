"""`cockpit-api snapshot`: a deployment's state and behaviour, written as a scenario file
(take.py, the command, over read.py: the session and the pages; anonymize.py; render.py:
the file and ``--diff``; fit.py fits the charts and migration speeds)."""
