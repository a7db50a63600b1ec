"""The recovery reader: a side process that answers the recovery requests the window cannot
(older ranges, earlier epochs) from the Kafka mirror (feedsvc.server.recovery.archive), so the
service's loop never reads Kafka.

The service hands a request over with a tag ([tag, request]) on an ipc PUSH socket of its own
and gets [tag, header] or [tag, header, body] back on another, polled by its loop, which sends
the reply to the client the tag stands for. Requests wait at most ARCHIVE_TIMEOUT_S; a dead
reader is restarted on the stats timer, and meanwhile requests are answered from memory alone.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any, Final

import orjson
import zmq

from feedsvc.config import KafkaConfig, LogConfig
from feedsvc.logs import RateLimiter, setup_logging
from feedsvc.protocol.recovery import ERROR_NOT_IN_WINDOW, SOURCE_KAFKA
from feedsvc.server.mirror.process import ask_for_signal_at_parent_death, name_this_process

log = logging.getLogger("feedsvc.recovery")

# How long one lookup may take in the reader, and how long the service keeps its tag.
LOOKUP_TIMEOUT_S: Final = 5.0
ARCHIVE_TIMEOUT_S: Final = 10.0
# Requests handed over and not answered yet, at most (beyond: the client gets busy).
MAX_PENDING: Final = 64
RESTART_INTERVAL_S: Final = 5.0
START_TIMEOUT_S: Final = 30.0
READY: Final = b"ready"
READER_PROCESS_NAME: Final = "feedsvc-recover"


def _reply(fields: dict[str, Any], frames: list[bytes]) -> list[bytes]:
    header = {
        "ok": True,
        "id": fields["id"],
        "symbol": fields["symbol"],
        "epoch": fields["epoch"],
        "first": fields["first"],
        "last": fields["first"] + len(frames) - 1,
        "count": len(frames),
        "source": SOURCE_KAFKA,
    }
    return [orjson.dumps(header), b"\n".join(frames)]


def run_reader_process(
    config: KafkaConfig, log_config: LogConfig, requests_endpoint: str, replies_endpoint: str
) -> None:
    """Entry point of the reader process (spawned by ArchiveReader)."""
    setup_logging(log_config.level, log_config.format)
    # The service decides when it stops (SIGTERM from it); it ends with its parent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ask_for_signal_at_parent_death(signal.SIGTERM)
    name_this_process(READER_PROCESS_NAME)
    from feedsvc.replay.reader import existing_topic_partitions, make_consumer
    from feedsvc.server.recovery.archive import Archive, ArchiveMiss

    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.connect(requests_endpoint)
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(replies_endpoint)
    consumer = make_consumer(config.bootstrap, settings=config.connection_settings())
    archive: Archive | None = None
    push.send_multipart([READY])
    try:
        while True:
            if not pull.poll(1000):
                continue
            tag, request = pull.recv_multipart()
            fields = orjson.loads(request)
            try:
                if archive is None:
                    partitions = existing_topic_partitions(consumer, config.topic)
                    if partitions is None:
                        raise ArchiveMiss(f"the topic {config.topic} does not exist")
                    archive = Archive(consumer, config.topic, partitions)
                frames = archive.frames(
                    fields["symbol"],
                    fields["epoch"],
                    fields["first"],
                    fields["last"],
                    time.monotonic() + LOOKUP_TIMEOUT_S,
                )
                push.send_multipart([tag, *_reply(fields, frames)])
            except ArchiveMiss as miss:
                error = {
                    "ok": False,
                    "id": fields["id"],
                    "error": ERROR_NOT_IN_WINDOW,
                    "detail": f"not in memory, and from Kafka: {miss.detail}",
                    "oldest": miss.oldest,
                    "source": SOURCE_KAFKA,
                }
                push.send_multipart([tag, orjson.dumps(error)])
            except Exception as error:  # a broker problem: the service answers from memory
                log.warning("recovery from Kafka failed: %s", error)
                archive = None
                push.send_multipart([tag, b""])
    finally:
        consumer.close()
        context.destroy(linger=0)
        sys.exit(0)


class ArchiveReader:
    """The service's side of the reader process: hand requests over, take replies back."""

    def __init__(self, context: zmq.Context, config: KafkaConfig, log_config: LogConfig) -> None:
        self._context = context
        self._config = config
        self._log_config = log_config
        self._folder = tempfile.mkdtemp(prefix="feedsvc-recovery-")
        self._requests = context.socket(zmq.PUSH)
        self._requests.setsockopt(zmq.LINGER, 0)
        self._requests.setsockopt(zmq.SNDHWM, MAX_PENDING)
        self._requests.bind(f"ipc://{self._folder}/requests")
        self.replies = context.socket(zmq.PULL)
        self.replies.setsockopt(zmq.LINGER, 0)
        self.replies.bind(f"ipc://{self._folder}/replies")
        self._process: multiprocessing.process.BaseProcess | None = None
        self.ready = False
        # tag -> (client route, the caller's note, handed over at)
        self._pending: dict[bytes, tuple[list[bytes], Any, float]] = {}
        self._next_tag = 0
        self._warnings = RateLimiter(RESTART_INTERVAL_S, time.monotonic)
        self._restart_at = 0.0

    @property
    def available(self) -> bool:
        return self.ready and len(self._pending) < MAX_PENDING

    def start(self) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.ready = False
        self._process = spawn.Process(
            target=run_reader_process,
            args=(
                self._config,
                self._log_config,
                f"ipc://{self._folder}/requests",
                f"ipc://{self._folder}/replies",
            ),
            name="feedsvc-recovery-reader",
            daemon=True,
        )
        self._process.start()

    def submit(self, route: list[bytes], fields: dict[str, Any], note: Any, now: float) -> bool:
        """Hand a request over (`note` comes back with its answer); False when the reader
        cannot take it now."""
        if not self.available:
            return False
        self._next_tag += 1
        tag = b"%d" % self._next_tag
        try:
            self._requests.send_multipart([tag, orjson.dumps(fields)], zmq.NOBLOCK)
        except zmq.Again:
            return False
        self._pending[tag] = (route, note, now)
        return True

    def take_replies(self) -> Iterator[tuple[list[bytes], Any, list[bytes]]]:
        """(route, note, reply parts) of the answers that arrived; reply parts are empty when
        the reader could not ask Kafka (answer from memory then)."""
        while True:
            try:
                parts = self.replies.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if parts == [READY]:
                self.ready = True
                continue
            pending = self._pending.pop(parts[0], None)
            if pending is not None:
                route, note, _at = pending
                yield route, note, [part for part in parts[1:] if part]

    def expire(self, now: float) -> list[tuple[list[bytes], Any]]:
        """(route, note) of the requests not answered in ARCHIVE_TIMEOUT_S (forgotten now);
        restarts a dead reader."""
        expired = [
            (tag, route, note)
            for tag, (route, note, at) in self._pending.items()
            if now - at > ARCHIVE_TIMEOUT_S
        ]
        for tag, _route, _note in expired:
            del self._pending[tag]
        process = self._process
        if process is not None and not process.is_alive() and now >= self._restart_at:
            if self._warnings.allow():
                log.warning(
                    "the recovery reader process exited (code %s); restarting it", process.exitcode
                )
            self._restart_at = now + RESTART_INTERVAL_S
            self.start()
        return [(route, note) for _tag, route, note in expired]

    def close(self) -> None:
        process = self._process
        if process is not None and process.is_alive():
            process.terminate()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        self._requests.close()
        self.replies.close()
        shutil.rmtree(self._folder, ignore_errors=True)
