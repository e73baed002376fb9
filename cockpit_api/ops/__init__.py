"""Operations: Prometheus metrics, logs, the audit log."""
