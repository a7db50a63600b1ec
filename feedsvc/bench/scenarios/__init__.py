"""Benchmark scenarios on the harness core (feedsvc.bench); scripts/bench_*.py call main()."""
