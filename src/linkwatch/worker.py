"""Running the live worker: topic checks, logging, signals, bounded shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
from typing import NoReturn

import faust

from linkwatch.errors import LinkWatchError
from linkwatch.logs import log_handler
from linkwatch.service import create_app
from linkwatch.settings import Settings

log = logging.getLogger("linkwatch.worker")


class TopicLayoutError(LinkWatchError):
    """Input topics disagree on their partition count: users would be split across workers."""


async def prepare_topics(settings: Settings) -> int:
    """Create missing topics; refuse to start when the input topics are not co-partitioned."""
    from linkwatch.topics import ensure_topics

    inputs = list(settings.input_topics.values())
    internal = [settings.topic_ticks, settings.topic_signals]
    outputs = [settings.topic_triggers, settings.topic_dlq, settings.topic_health]
    names = [*inputs, *internal, *outputs, settings.topic_profiles]
    counts = await ensure_topics(settings, names, settings.partitions)
    # The entity stage's marks assume as many signal partitions as input partitions.
    input_counts = {name: counts[name] for name in [*inputs, *internal]}
    if len(set(input_counts.values())) != 1:
        layout = ", ".join(f"{name}={count}" for name, count in input_counts.items())
        raise TopicLayoutError(
            "input topics must all have the same number of partitions, keyed by user_id; "
            f"found {layout}. Recreate or repartition them before starting LinkWatch."
        )
    return int(next(iter(input_counts.values())))


class LinkWatchWorker(faust.Worker):
    """Faust's worker, with a bound on how long a SIGTERM shutdown may take."""

    shutdown_timeout: float = 10.0

    def _on_sigterm(self) -> None:
        _exit_after(self.shutdown_timeout)
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        _exit_after(self.shutdown_timeout)
        super()._on_sigint()


def _exit_after(seconds: float) -> None:
    """If a graceful stop hangs (e.g. the broker is gone), leave anyway: nothing is lost,
    since uncommitted offsets are processed again by whoever owns the partitions next."""

    def force() -> None:
        log.warning("shutdown took longer than %.0f s; exiting", seconds)
        os._exit(0)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


def run_worker(settings: Settings) -> NoReturn:
    handler = log_handler(settings.log_format)
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    # Faust logs every wait for its table-changelog buffer (100 records) as a warning: under
    # load that is normal back-pressure, dozens of lines a minute; the send latency metrics
    # show it instead.
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)
    tune_gc(settings)
    if settings.event_loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    partitions = asyncio.run(prepare_topics(settings))
    if partitions != settings.partitions:
        log.info("input topics have %d partitions; using that", partitions)
        settings = settings.model_copy(update={"partitions": partitions})
    linkwatch = create_app(settings)
    linkwatch.app.conf.loghandlers = [handler]
    worker = LinkWatchWorker(
        linkwatch.app,
        loglevel=settings.log_level,
        quiet=True,  # no banner or start-up spinner: they are terminal escapes in a log file
        override_logging=False,
        redirect_stdouts=False,
    )
    worker.shutdown_timeout = settings.shutdown_timeout
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    worker.execute_from_commandline()


def tune_gc(settings: Settings) -> None:
    """The worker holds many long-lived objects (states, tables, Faust's and aiokafka's
    machinery): with Python's thresholds its collections took about an eighth of its CPU, most
    of it in full collections of up to 0.3 s (bench/service.py --gc-probe)."""
    gc.set_threshold(*settings.gc_thresholds)


def main() -> None:
    """`python -m linkwatch.worker` / `linkwatch worker`: settings from LINKWATCH_* only."""
    run_worker(Settings())


if __name__ == "__main__":
    main()
