"""HTTP: the compiled pipeline and Connexion's parts, validators, header and body limits,
the access log, problem+json answers, the served specs and the dashboard's files."""
