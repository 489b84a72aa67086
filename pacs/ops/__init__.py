"""Operations: the health and readiness endpoints and the Prometheus metrics (issue 21, point 6).

A room of its own (``ops`` in docs/ARCHITECTURE.md): it reads the index, the
tiers, the lifecycle and the preservation alerts, and nothing imports it but
the root URLs."""
