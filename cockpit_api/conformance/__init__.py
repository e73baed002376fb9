"""`cockpit-api conformance`: schemathesis against any deployment, and its hooks."""
