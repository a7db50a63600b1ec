"""The mirror process's main loop: hand-off batches in, transactions out, reports back.

It commits every `kafka.transaction_interval_ms` or `kafka.transaction_max_ticks`, and reports
the last committed batch so the service can let go of it. It exits when the service sends the
end of the stream (after a close record), when a transaction cannot be committed (the service
then starts a successor), and when the service itself is gone: then it commits what it was
handed and exits, so a `kill -9` of `feedsvc serve` loses only what had not been handed over.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import time
from typing import Any, Final

import orjson
import zmq

from feedsvc.config import KafkaConfig, LogConfig
from feedsvc.logs import setup_logging
from feedsvc.server.mirror.producer import MirrorAbort, MirrorProducer, log
from feedsvc.server.mirror.wire import BATCH, END, parse_batch

STATS_INTERVAL_S: Final = 0.5
CALLBACK_POLL_INTERVAL_S: Final = 0.1
# Exit codes the service tells apart in its log.
EXIT_ABORTED: Final = 3
_PR_SET_PDEATHSIG: Final = 1
_PR_SET_NAME: Final = 15
# /proc/<pid>/comm of the mirror process: tools tell it from serve's other spawned children.
MIRROR_PROCESS_NAME: Final = "feedsvc-mirror"


def _prctl(option: int, argument: int | bytes) -> None:
    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name, use_errno=True).prctl(option, argument, 0, 0, 0)


def ask_for_signal_at_parent_death(signum: int) -> None:
    """Linux's PR_SET_PDEATHSIG: the kernel sends `signum` when the parent dies."""
    _prctl(_PR_SET_PDEATHSIG, signum)


def name_this_process(name: str) -> None:
    """Linux's PR_SET_NAME: `name` (15 bytes at most) in /proc/<pid>/comm, ps and top."""
    _prctl(_PR_SET_NAME, name.encode()[:15])


class _MirrorLoop:
    def __init__(
        self,
        config: KafkaConfig,
        epoch: int,
        parent_pid: int,
        pull: zmq.Socket,
        report: zmq.Socket,
    ) -> None:
        self.config = config
        self.producer = MirrorProducer(config, epoch)
        self.parent_pid = parent_pid
        self.pull = pull
        self.report_socket = report
        self.parent_gone = False
        self._interval_s = config.transaction_interval_ms / 1000
        self._opened_at: float | None = None
        self._hello_sent = False

    def report(self, finished: bool = False) -> None:
        producer = self.producer
        self.report_socket.send(
            orjson.dumps(
                {
                    "ready": producer.ready,
                    "committed_batch": producer.committed_batch,
                    "committed_ticks": producer.committed_ticks,
                    "produced": producer.produced,
                    "failed": producer.failed,
                    "queued": producer.queued,
                    "broker_up": producer.broker_up,
                    "finished": finished,
                }
            )
        )

    def _parent_alive(self) -> bool:
        if os.getppid() != self.parent_pid:
            self.parent_gone = True
        return not self.parent_gone

    def run(self) -> int:
        producer = self.producer
        next_report = time.monotonic()
        next_poll = time.monotonic()
        while True:
            now = time.monotonic()
            if not self._parent_alive():
                return self._finish_orphaned()
            if now >= next_report:
                self.report()
                next_report = now + STATS_INTERVAL_S
            if not producer.ready:
                # Batches wait in the service (retained) until the resume point is known.
                if producer.prepare(now):
                    self.report()
                else:
                    time.sleep(0.05)
                continue
            if self._commit_due(now):
                if producer.commit():
                    self._opened_at = None
                    self.report()
                continue  # not committed yet: Kafka is slow or down; try again
            if self.pull.poll(50):
                message = self.pull.recv_multipart()
                if message[0] == END:
                    return self._finish(orjson.loads(message[1]))
                if message[0].startswith(BATCH):
                    batch_id, dropped, batch = parse_batch(message[0])
                    producer.dropped = max(producer.dropped, dropped)
                    producer.produce_batch(batch_id, batch)
                    if self._opened_at is None and producer.open_ticks:
                        self._opened_at = now
            # Callbacks (failures, errors) are served on a timer, not per batch.
            if now >= next_poll:
                producer.poll(0)
                next_poll = now + CALLBACK_POLL_INTERVAL_S

    def _commit_due(self, now: float) -> bool:
        producer = self.producer
        if not producer.open_ticks or self._opened_at is None:
            return False
        return (
            now - self._opened_at >= self._interval_s
            or producer.open_ticks >= self.config.transaction_max_ticks
        )

    def _commit_within(self, timeout_s: float, close: dict[str, Any] | None = None) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.producer.commit(close):
                return True
            if time.monotonic() >= deadline:
                return False

    def _finish(self, close: dict[str, Any]) -> int:
        """The end of the stream: commit the rest with the epoch's close record."""
        if not self._commit_within(self.config.flush_timeout_s, close):
            log.error(
                "Kafka did not commit within kafka.flush_timeout_s (%.1f s): %d ticks and the "
                "epoch's close record are not in Kafka",
                self.config.flush_timeout_s,
                self.producer.open_ticks,
            )
        self.report(finished=True)
        return 0

    def _finish_orphaned(self) -> int:
        """The service is gone: commit what was handed over (already in this process) and exit;
        the epoch stays open (no close record)."""
        log.warning("the service is gone: committing what it handed over, then exiting")
        while True:
            try:
                message = self.pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if message[0].startswith(BATCH):
                batch_id, _dropped, batch = parse_batch(message[0])
                self.producer.produce_batch(batch_id, batch)
        if not self._commit_within(self.config.flush_timeout_s):
            log.error("Kafka did not commit the last %d ticks", self.producer.open_ticks)
        return 0


def run_mirror_process(
    config: KafkaConfig,
    log_config: LogConfig,
    epoch: int,
    parent_pid: int,
    handoff_endpoint: str,
    report_endpoint: str,
) -> None:
    """Entry point of the mirror process (spawned by MirrorHandoff)."""
    setup_logging(log_config.level, log_config.format)
    # SIGINT goes to the whole process group; the service decides when the mirror stops. Its
    # death is noticed by the parent pid changing (PR_SET_PDEATHSIG makes that prompt).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    loop_holder: list[_MirrorLoop] = []

    def parent_died(_signum: int, _frame: object) -> None:
        for loop in loop_holder:
            loop.parent_gone = True

    signal.signal(signal.SIGUSR1, parent_died)
    ask_for_signal_at_parent_death(signal.SIGUSR1)
    name_this_process(MIRROR_PROCESS_NAME)
    # Before librdkafka starts its threads, so they inherit it (kafka.mirror_nice: the trade-off).
    os.nice(config.mirror_nice)
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, config.handoff_queue_batches)
    pull.connect(handoff_endpoint)
    report = context.socket(zmq.PUSH)
    report.setsockopt(zmq.LINGER, 2000)
    report.connect(report_endpoint)
    code = 0
    try:
        loop = _MirrorLoop(config, epoch, parent_pid, pull, report)
        loop_holder.append(loop)
        loop.report()
        code = loop.run()
    except MirrorAbort as error:
        log.error("Kafka transaction cannot be committed (%s): exiting for a restart", error)
        code = EXIT_ABORTED
    finally:
        pull.close(linger=0)
        report.close()
        context.term()
    sys.exit(code)
