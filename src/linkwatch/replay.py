"""Offline replay: run the engine over a JSON Lines file, exactly as the live worker would."""

from __future__ import annotations

import gc
import gzip
import io
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import orjson
from pydantic import BaseModel

from linkwatch.codec import decode_event
from linkwatch.deadletters import DeadLetter, FileSource
from linkwatch.engine import JourneyEngine, Output
from linkwatch.entities import Offered, build_entity_stage, derive_signals, features_of
from linkwatch.errors import RecordRejected
from linkwatch.journeys import JourneySet
from linkwatch.partition import PartitionProcessor
from linkwatch.report import Report
from linkwatch.signals import Published
from linkwatch.triggers import Resolution, TopicRecord, Trigger

TriggerSink = Callable[[TopicRecord], None]  # triggers and resolutions, as on the topic
DeadLetterSink = Callable[[DeadLetter], None]
RecordSink = Callable[[Published], None]  # health and profile records, as on their topics


@dataclass
class ReplayResult:
    report: Report
    processor: PartitionProcessor


def tune_gc_for_throughput() -> None:
    """Per-user states are many small acyclic tuples; the default cyclic-GC cadence rescans
    them constantly (~10% of replay time). Freeze start-up objects and collect less often."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def replay_lines(
    lines: Iterable[bytes],
    journeys: JourneySet,
    *,
    source_name: str = "-",
    on_trigger: TriggerSink | None = None,
    on_dead_letter: DeadLetterSink | None = None,
    on_record: RecordSink | None = None,
    close_open: bool = False,
) -> ReplayResult:
    """Decode and process every line; hand triggers, health and profile records and dead
    letters to the sinks."""
    processor = PartitionProcessor(JourneyEngine(journeys))
    report = Report(journeys)
    process = processor.process
    count_outputs = report.count_outputs
    # The entity stage follows the journey engine's watermark (see `entities`).
    entities = build_entity_stage(journeys)
    features = features_of(journeys)
    moved_to: int | None = None  # the watermark the entity stage last ran to

    topic_records = (Trigger, Resolution)  # a tuple: `Trigger | Resolution` is built per use

    def emit(outputs: list[Output]) -> None:
        count_outputs(outputs)
        if on_trigger is not None:
            for out in outputs:
                if isinstance(out, topic_records):
                    on_trigger(out)
        if entities is not None:
            offer = entities.offer
            for sig in derive_signals(outputs, features):
                if offer(sig) is not Offered.ACCEPTED:
                    report.signals_refused += 1

    def run_entities() -> None:
        nonlocal moved_to
        watermark = processor.watermark
        if entities is None or watermark is None or watermark == moved_to:
            return
        moved_to = watermark
        produced = entities.run(watermark)
        report.count_entity_outputs(produced)
        if on_record is not None:
            for out in produced:
                if isinstance(out, Published):
                    on_record(out)

    read = 0
    for line_no, raw_line in enumerate(lines, start=1):
        raw = raw_line.rstrip(b"\r\n")
        if not raw or raw.isspace():
            continue  # a blank line carries no record (trailing newline, separator)
        read += 1
        try:
            event = decode_event(raw)
            result = process(event)
        except RecordRejected as rejection:
            report.rejected[rejection.reason] += 1
            if on_dead_letter is not None:
                source = FileSource(path=source_name, line=line_no)
                on_dead_letter(DeadLetter.from_rejection(raw, rejection, source))
            continue
        report.count_event(event, result.verdict)
        if result.outputs:
            emit(result.outputs)
        if processor.watermark != moved_to:  # `run_entities` has nothing to do otherwise
            run_entities()
    report.read = read
    emit(processor.flush(close_open=close_open))
    run_entities()
    for journey, step in processor.open_instances():
        report.open[journey, step] += 1
    return ReplayResult(report, processor)


def open_events(path: str) -> BinaryIO:
    """A JSON Lines file, gzip by its `.gz` name, or `-` for standard input."""
    if path == "-":
        return sys.stdin.buffer
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]  # owns and closes the file
    return open(path, "rb")  # returned to the caller, who closes it


class JsonLinesWriter:
    """Writes pydantic models as JSON Lines (orjson), gzip by a `.gz` name."""

    def __init__(self, path: str, stack: ExitStack) -> None:
        self._out: IO[bytes]
        if path == "-":
            self._out = sys.stdout.buffer
        elif path.endswith(".gz"):
            self._out = stack.enter_context(gzip.GzipFile(path, "wb", mtime=0))  # type: ignore[arg-type]
        else:
            self._out = stack.enter_context(open(path, "wb"))  # noqa: SIM115

    def write(self, model: BaseModel) -> None:
        self._out.write(orjson.dumps(model.model_dump(mode="json")) + b"\n")

    def write_record(self, published: Published) -> None:
        self.write(published.record)


def file_size(path: str) -> int | None:
    if path == "-":
        return None
    try:
        return Path(path).stat().st_size
    except OSError:
        return None


def progress_lines(stream: BinaryIO, raw: IO[bytes] | None, total: int | None) -> Iterator[bytes]:
    """Lines from `stream`, with a progress bar on stderr (only when it is a terminal)."""
    if not sys.stderr.isatty() or total is None or raw is None:
        yield from stream
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("replay", total=total)
        for n, line in enumerate(stream):
            if n % 4096 == 0:
                bar.update(task, completed=raw.tell())
            yield line


def underlying(stream: BinaryIO) -> IO[bytes] | None:
    """The file object whose position tracks progress through the (possibly gzip) file."""
    if isinstance(stream, gzip.GzipFile):
        return stream.fileobj
    if isinstance(stream, io.BufferedReader) and stream is not sys.stdin.buffer:
        return stream
    return None
