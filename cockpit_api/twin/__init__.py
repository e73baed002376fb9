"""`cockpit-api twin`: the mock against a deployment, step by step (command.py runs it)."""
