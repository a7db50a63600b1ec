"""The service's end of the side path to Kafka: collects published frames, hands them to the
mirror process in numbered batches, keeps every batch until the mirror reports it committed,
and supervises the process: a dead one is restarted (with backoff) and its successor is handed
what was not committed yet, so the audit keeps every tick exactly once across the crash.

The hot path only appends each frame to a list. Everything else runs once per loop pass or on
the stats timer, and never waits: a hand-off socket that is full, or a mirror that is down,
leaves batches retained; past `kafka.max_retained_bytes` new batches are dropped and counted.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
import zmq

from feedsvc.config import KafkaConfig, LogConfig
from feedsvc.logs import RateLimiter
from feedsvc.server.mirror.process import run_mirror_process
from feedsvc.server.mirror.wire import END, batch_message

log = logging.getLogger("feedsvc.mirror")

# How long start() waits for the first mirror process to report (it then reports while it
# connects: Kafka itself may come later).
STARTUP_TIMEOUT_S: Final = 30.0
RESTART_BACKOFF_FIRST_S: Final = 0.5
# A process that ran this long without dying starts the backoff over.
RESTART_BACKOFF_RESET_S: Final = 60.0
# A report older than this means the mirror process is not answering.
REPORT_STALE_S: Final = 5.0
WARNING_INTERVAL_S: Final = 10.0


@dataclass
class MirrorStats:
    """Counts of ticks on the side path; the service reports them and exposes them as metrics.

    ``handed_off`` ticks were accepted for the mirror (retained until committed); ``dropped``
    never were (the retained bound); ``produced`` were given to librdkafka (re-sent ones again);
    ``delivered`` are committed in Kafka: visible to read_committed readers.
    """

    handed_off: int = 0
    dropped: int = 0
    produced: int = 0
    delivered: int = 0
    failed: int = 0
    queued: int = 0
    broker_up: bool = False
    finished: bool = False
    restarts: int = 0
    retained_ticks: int = 0
    retained_bytes: int = 0

    @property
    def undelivered(self) -> int:
        """Ticks published but not committed in Kafka (so far, or for good once finished)."""
        return self.handed_off + self.dropped - self.delivered


class _MirrorProcess:
    """One mirror process and the two ipc sockets of its own (a successor gets new ones, so
    nothing queued for a dead process reaches it)."""

    def __init__(
        self, context: zmq.Context, config: KafkaConfig, log_config: LogConfig, epoch: int
    ) -> None:
        self.folder = tempfile.mkdtemp(prefix="feedsvc-mirror-")
        handoff_endpoint = f"ipc://{self.folder}/handoff"
        report_endpoint = f"ipc://{self.folder}/report"
        self.push = context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.SNDHWM, config.handoff_queue_batches)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.bind(handoff_endpoint)
        self.reports = context.socket(zmq.PULL)
        self.reports.setsockopt(zmq.LINGER, 0)
        self.reports.bind(report_endpoint)
        spawn = multiprocessing.get_context("spawn")
        self.process = spawn.Process(
            target=run_mirror_process,
            args=(config, log_config, epoch, os.getpid(), handoff_endpoint, report_endpoint),
            name="feedsvc-mirror",
            daemon=True,
        )
        self.started_at = time.monotonic()
        self.last_report_at: float | None = None
        self.ready = False
        self.finished = False
        # Ticks this process reported produced (added to the total when it is replaced).
        self.produced = 0
        self.process.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def close(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.push.close()
        self.reports.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class MirrorHandoff:
    """Collects frames, retains and hands over batches, supervises the mirror process.

    Parameters
    ----------
    context:
        The service's ZeroMQ context.
    config, log_config:
        The kafka and log sections.
    epoch:
        The service epoch (checkpoints name it; a new epoch starts its batches at 1).
    """

    def __init__(
        self,
        context: zmq.Context,
        config: KafkaConfig,
        log_config: LogConfig,
        epoch: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.stats = MirrorStats()
        self._context = context
        self._log_config = log_config
        self._epoch = epoch
        self._pending: list[bytes] = []
        # The hot path appends to this list; the loop reads its length (one call per pass).
        self.pending_frames = self._pending
        self.append = self._pending.append
        self.batch_ticks = config.handoff_batch_ticks
        self._clock = clock
        self._last_flush = clock()
        self._max_delay_s = config.handoff_max_delay_ms / 1000
        # (batch id, frames, tick count) handed off and not yet committed, oldest first; the
        # first `_sent` of them went to the current process.
        self._retained: collections.deque[tuple[int, bytes, int]] = collections.deque()
        self._sent = 0
        self._next_batch = 1
        self._committed_batch = 0
        self._produced_before = 0
        self._process: _MirrorProcess | None = None
        self._restart_at: float | None = None
        self._backoff_s = RESTART_BACKOFF_FIRST_S
        self._warnings = RateLimiter(WARNING_INTERVAL_S, time.monotonic)
        self._closed = False

    def start(self) -> None:
        """Start the mirror process and wait until it reports (so no batch meets no peer)."""
        self._process = _MirrorProcess(self._context, self.config, self._log_config, self._epoch)
        if not self._process.reports.poll(int(STARTUP_TIMEOUT_S * 1000)):
            raise RuntimeError(f"the Kafka mirror process did not start in {STARTUP_TIMEOUT_S} s")
        self.receive_stats()

    @property
    def process_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def flush_if_due(self, now: float) -> None:
        """Flush when the pending frames are due by count or age. At an age with nothing
        pending this only restarts the clock, so `flush_due_at` is never in the past for long.
        Batches a full socket did not take are sent again with the next batch and on the stats
        timer."""
        if len(self._pending) >= self.batch_ticks or now - self._last_flush >= self._max_delay_s:
            self.flush(now)

    @property
    def flush_due_at(self) -> float:
        """When pending frames are due by age (monotonic); by count: ``len(pending_frames) >=
        batch_ticks``. The service loop compares these and calls flush_if_due only then."""
        return self._last_flush + self._max_delay_s

    @property
    def backlog(self) -> int:
        """Ticks published and not yet committed in Kafka (dropped ones excluded)."""
        stats = self.stats
        return max(0, stats.handed_off + len(self._pending) - stats.delivered)

    def flush(self, now: float) -> None:
        """Retain the pending frames as one batch and hand over what the socket takes; past
        the retained bound the batch is dropped, counted."""
        pending = self._pending
        self._last_flush = now
        if not pending:
            return
        stats = self.stats
        # The header's dropped count is the one when the batch was made (a re-sent batch
        # carries it unchanged; the mirror keeps the highest it saw).
        batch = batch_message(self._next_batch, stats.dropped, pending)
        ticks = len(pending)
        pending.clear()
        if stats.retained_bytes + len(batch) > self.config.max_retained_bytes:
            stats.dropped += ticks
            return
        self._retained.append((self._next_batch, batch, ticks))
        self._next_batch += 1
        stats.handed_off += ticks
        stats.retained_ticks += ticks
        stats.retained_bytes += len(batch)
        self._send_retained()

    def _send_retained(self) -> None:
        process = self._process
        if process is None or not process.ready:
            return
        retained, push = self._retained, process.push
        while self._sent < len(retained):
            _batch_id, batch, _ticks = retained[self._sent]
            try:
                push.send(batch, zmq.NOBLOCK)
            except zmq.Again:
                return
            self._sent += 1

    def receive_stats(self) -> None:
        """Take the mirror process's latest report; restart it when it died (on the stats
        timer, never blocking the loop)."""
        process = self._process
        if process is not None:
            latest = None
            while True:
                try:
                    latest = process.reports.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
            if latest is not None:
                self._apply_report(process, orjson.loads(latest))
            self._send_retained()
        self._supervise()

    def _apply_report(self, process: _MirrorProcess, report: Mapping[str, Any]) -> None:
        stats = self.stats
        process.last_report_at = time.monotonic()
        process.produced = report["produced"]
        stats.produced = self._produced_before + report["produced"]
        stats.failed = report["failed"]
        stats.queued = report["queued"]
        stats.broker_up = report["broker_up"]
        stats.finished = process.finished = report["finished"]
        # The epoch's committed ticks (a predecessor's included: the process read them back).
        stats.delivered = max(stats.delivered, report["committed_ticks"])
        self._forget_committed(report["committed_batch"])
        if report["ready"] and not process.ready:
            # A new process knows what is committed: hand it everything after that.
            process.ready = True
            self._sent = 0
            self._send_retained()

    def _forget_committed(self, committed_batch: int) -> None:
        retained, stats = self._retained, self.stats
        self._committed_batch = max(self._committed_batch, committed_batch)
        while retained and retained[0][0] <= self._committed_batch:
            _batch_id, batch, ticks = retained.popleft()
            stats.retained_ticks -= ticks
            stats.retained_bytes -= len(batch)
            self._sent = max(0, self._sent - 1)

    def _supervise(self) -> None:
        process, stats, now = self._process, self.stats, time.monotonic()
        if self._closed:
            return
        if process is not None and not process.alive() and not process.finished:
            self._produced_before += process.produced
            exit_code = process.process.exitcode
            process.close()
            self._process = None
            stats.broker_up = False
            if now - process.started_at >= RESTART_BACKOFF_RESET_S:
                self._backoff_s = RESTART_BACKOFF_FIRST_S
            self._restart_at = now + self._backoff_s
            log.error(
                "the Kafka mirror process exited (code %s); restarting it in %.1f s, %d ticks "
                "retained for it",
                exit_code,
                self._backoff_s,
                stats.retained_ticks,
            )
            self._backoff_s = min(self._backoff_s * 2, self.config.restart_backoff_max_s)
        if self._process is None and self._restart_at is not None and now >= self._restart_at:
            self._restart_at = None
            stats.restarts += 1
            self._process = _MirrorProcess(
                self._context, self.config, self._log_config, self._epoch
            )
            if self._warnings.allow():
                log.warning("restarted the Kafka mirror process (%d restarts)", stats.restarts)

    def problem(self) -> str | None:
        """Why the audit trail is not being written now, or None while it is."""
        stats, process = self.stats, self._process
        if process is None:
            return f"the Kafka mirror process is down (restarting; {stats.restarts} restarts)"
        reported_at = process.last_report_at
        if reported_at is not None and time.monotonic() - reported_at > REPORT_STALE_S:
            return "the Kafka mirror process does not report"
        if not process.ready or not stats.broker_up:
            return f"Kafka at {self.config.bootstrap} is unreachable: ticks are retained"
        return None

    def close(self, timeout_s: float, last_seq: Mapping[str, int] | None = None) -> MirrorStats:
        """Hand over the rest with the epoch's close (every symbol's last seq), let the mirror
        commit within timeout_s, and stop. A mirror process that is gone is not waited for.

        Returns the final counts; ``undelivered`` is what Kafka never committed.
        """
        if self._closed:
            return self.stats
        self._closed = True
        self.flush(self._clock())
        process = self._process
        deadline = time.monotonic() + timeout_s
        if process is not None and process.alive():
            # Until it is ready (Kafka down), nothing can be committed; wait for it within the
            # same timeout, then hand over everything retained and the end of the stream.
            while not process.ready and process.alive() and time.monotonic() < deadline:
                if process.reports.poll(200):
                    self.receive_stats()
            if process.ready:
                self._hand_over_rest(process, deadline, last_seq or {})
            while not process.finished and process.alive() and time.monotonic() < deadline:
                if process.reports.poll(200):
                    self.receive_stats()
            self.receive_stats()
        if process is not None:
            process.close()
        self._process = None
        self.stats.finished = True
        return self.stats

    def _hand_over_rest(
        self, process: _MirrorProcess, deadline: float, last_seq: Mapping[str, int]
    ) -> None:
        process.push.setsockopt(zmq.SNDTIMEO, max(1, int((deadline - time.monotonic()) * 1000)))
        close = orjson.dumps({"last_seq": dict(last_seq), "dropped": self.stats.dropped})
        try:
            retained = self._retained
            while self._sent < len(retained):
                _batch_id, batch, _ticks = retained[self._sent]
                process.push.send(batch)
                self._sent += 1
            process.push.send_multipart((END, close))
        except zmq.Again:
            log.error("the Kafka mirror process did not take the rest of the stream in time")
