"""What operators watch: the counters the metrics collector reads, /metrics, /healthz."""
