"""Provider orchestration: each stage as a failover chain of providers (`failover`), their
health and circuit breakers per process (`health`), and what providers keep per process
(`shared`). The providers themselves are in adapters/."""
