"""The Cockpit API server: app factory, auth, configuration and CLI."""
