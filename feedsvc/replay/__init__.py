"""`feedsvc replay`: read the Kafka mirror of the tick stream back into a file, and audit it.

times: --since/--until; plan: which offsets to read; reader: Kafka; ticks: decoding and the exact
window; audit: the pure --verify check; output: the --out writers; progress: the bar on stderr;
command: the arguments and the command that wires these together.
"""
