"""`feedsvc loadtest`: synthetic load through a real service, measured by real subscribers, with a
raw pyzmq baseline from the same invocation.

roles (the hidden worker processes) -> run (one run: start, sample, stop) -> analysis (the
figures) -> render (the table), plots (PNGs); command holds the options and ties them together.
"""

from feedsvc.bench.loadtest.command import add_loadtest_arguments, run_from_args

__all__ = ["add_loadtest_arguments", "run_from_args"]
