"""Fake provider servers on 127.0.0.1 that speak each provider's real wire protocol.

The official SDKs are pointed at them through `base_url`, so an adapter is tested exactly as it
runs in production, down to the bytes on the socket. Each fake records the requests it saw (to
check auth headers, models, parameters) and can inject the faults that failover must survive.
Benchmarks reuse them to run cloud pipelines without a network.
"""
