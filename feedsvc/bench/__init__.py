"""The benchmark harness: processes, roles, baselines, latency and reporting, and the scenarios
(`feedsvc loadtest`, scripts/bench_*.py) built on it."""
