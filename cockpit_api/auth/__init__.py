"""Auth: users, tokens, sessions, login throttling."""
