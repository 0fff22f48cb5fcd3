"""The `linkwatch` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from linkwatch import __version__
from linkwatch.errors import ConfigError, LinkWatchError
from linkwatch.journeys import load_journeys

if TYPE_CHECKING:
    from linkwatch.settings import Settings
    from linkwatch.signals import Published

DEFAULT_SCHEMAS_DIR = Path("schemas")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"linkwatch: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `linkwatch replay ... | head`
        return 0
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linkwatch",
        description="Find where customer journeys break, and say whom to re-engage.",
    )
    parser.add_argument("--version", action="version", version=f"linkwatch {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    replay = sub.add_parser("replay", help="run the journey engine over a JSON Lines file")
    replay.add_argument("events", help="JSON Lines file (.gz allowed), or - for stdin")
    replay.add_argument("--journeys", type=Path, help="journeys TOML (default: built-in)")
    replay.add_argument("--out", help="write triggers here as JSON Lines (- for stdout)")
    replay.add_argument("--dead-letters", help="write rejected records here as JSON Lines")
    replay.add_argument(
        "--health", help="write link and community alerts here as JSON Lines (the health topic)"
    )
    replay.add_argument(
        "--profiles", help="write lifecycle tier changes here as JSON Lines (the profiles topic)"
    )
    replay.add_argument(
        "--close-open",
        action="store_true",
        help="at end of input, close every open instance at its deadline (fires their triggers)",
    )
    replay.add_argument(
        "--format", choices=["text", "json"], default="text", help="report format (stderr/stdout)"
    )
    replay.set_defaults(run=_run_replay)

    schemas = sub.add_parser(
        "schemas", help="write the JSON Schemas and the AsyncAPI document generated from the models"
    )
    schemas.add_argument("--dir", type=Path, default=DEFAULT_SCHEMAS_DIR)
    schemas.add_argument("--check", action="store_true", help="fail if the files are out of sync")
    schemas.set_defaults(run=_run_schemas)

    simulate = sub.add_parser(
        "simulate", help="write synthetic traffic as JSON Lines, or produce it to Kafka"
    )
    target = simulate.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="output file (.gz allowed)")
    target.add_argument(
        "--to-kafka", action="store_true", help="produce to the input topics (see --brokers)"
    )
    simulate.add_argument("--users", type=int, default=500)
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--bad-ratio", type=float, default=0.01)
    simulate.add_argument(
        "--start", type=int, help="event time of the first event, epoch ms (default: now)"
    )
    simulate.add_argument(
        "--brokers", help="with --to-kafka: bootstrap servers (default: from settings)"
    )
    simulate.add_argument(
        "--rate", type=float, help="with --to-kafka: events/s (default: as fast as possible)"
    )
    simulate.add_argument(
        "--forever",
        action="store_true",
        help="with --to-kafka: new populations (seed+1, seed+2, ...) until Ctrl-C",
    )
    simulate.add_argument(
        "--batch",
        type=int,
        help="with --to-kafka: up to N consecutive events of one user on one topic per Kafka "
        "record (NDJSON, content-type application/x-ndjson; default 1: one event a record)",
    )
    simulate.set_defaults(run=_run_simulate)

    tail = sub.add_parser("tail", help="print the records of a Kafka topic")
    tail.add_argument("topic")
    tail.add_argument("--brokers", help="bootstrap servers (default: from settings)")
    tail.add_argument("--limit", type=int, help="stop after this many records")
    tail.add_argument("--timeout", type=float, help="stop after this many seconds without one")
    tail.add_argument("--from-end", action="store_true", help="only records that arrive from now")
    tail.set_defaults(run=_run_tail)

    worker = sub.add_parser(
        "worker",
        help="run the live Faust worker (configured by LINKWATCH_* environment variables)",
    )
    worker.set_defaults(run=_run_worker)

    dev = sub.add_parser(
        "dev",
        help="live demo: embedded broker, a worker, simulated traffic and a live view",
    )
    dev.add_argument(
        "--users-per-min", type=float, default=240.0, help="new simulated users per minute"
    )
    dev.add_argument("--duration", type=float, help="stop after this many seconds")
    dev.add_argument("--seed", type=int, default=7)
    dev.set_defaults(run=_run_dev)

    check = sub.add_parser("check-journeys", help="validate a journeys file and print a summary")
    check.add_argument("journeys", type=Path, nargs="?")
    check.set_defaults(run=_run_check_journeys)
    table = sub.add_parser(
        "settings-table", help="print the README's settings table (markdown), from the model"
    )
    table.set_defaults(run=_run_settings_table)
    return parser


def _run_settings_table(args: argparse.Namespace) -> int:
    from linkwatch.settings import settings_table

    print(settings_table())
    return 0


def _run_replay(args: argparse.Namespace) -> int:
    from linkwatch.replay import (
        JsonLinesWriter,
        file_size,
        open_events,
        progress_lines,
        replay_lines,
        tune_gc_for_throughput,
        underlying,
    )

    journeys = load_journeys(args.journeys)
    tune_gc_for_throughput()
    started = time.perf_counter()
    with ExitStack() as stack:
        try:
            stream = open_events(args.events)
        except OSError as exc:
            print(f"linkwatch: cannot read {args.events}: {exc.strerror}", file=sys.stderr)
            return 2
        if args.events != "-":
            stack.enter_context(stream)
        triggers = JsonLinesWriter(args.out, stack) if args.out else None
        dead = JsonLinesWriter(args.dead_letters, stack) if args.dead_letters else None
        health = JsonLinesWriter(args.health, stack) if args.health else None
        profiles = JsonLinesWriter(args.profiles, stack) if args.profiles else None

        def on_record(published: Published) -> None:
            writer = health if published.topic == "health" else profiles
            if writer is not None:
                writer.write_record(published)

        lines = progress_lines(stream, underlying(stream), file_size(args.events))
        result = replay_lines(
            lines,
            journeys,
            source_name=args.events,
            on_trigger=triggers.write if triggers else None,
            on_dead_letter=dead.write if dead else None,
            on_record=on_record,
            close_open=args.close_open,
        )
    elapsed = time.perf_counter() - started
    # The report goes to stdout unless triggers do; then it goes to stderr.
    report_stream = sys.stderr if args.out == "-" else sys.stdout
    if args.format == "json":
        data = result.report.to_dict() | {"seconds": round(elapsed, 3)}
        report_stream.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        rate = result.report.read / elapsed if elapsed > 0 else 0.0
        report_stream.write(result.report.render() + "\n")
        report_stream.write(
            f"\n{result.report.read:,} records in {elapsed:.2f} s ({rate:,.0f}/s)\n"
        )
    return 0


def _run_schemas(args: argparse.Namespace) -> int:
    from linkwatch.schemas import check_schemas, write_schemas

    if args.check:
        problems = check_schemas(args.dir)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            return 1
        print(f"schemas in {args.dir} are in sync with the models")
        return 0
    for path in write_schemas(args.dir):
        print(f"wrote {path}")
    return 0


def _run_simulate(args: argparse.Namespace) -> int:
    from linkwatch.simulate import generate, write_jsonl

    if args.to_kafka:
        return _simulate_to_kafka(args)
    if args.brokers or args.rate is not None or args.forever or args.batch is not None:
        raise ConfigError("--brokers, --rate, --forever and --batch need --to-kafka")
    start = args.start if args.start is not None else int(time.time() * 1000)
    count = write_jsonl(
        Path(args.out),
        generate(seed=args.seed, users=args.users, start_ms=start, bad_ratio=args.bad_ratio),
    )
    print(f"wrote {count:,} records to {args.out}", file=sys.stderr)
    return 0


def _simulate_to_kafka(args: argparse.Namespace) -> int:
    import asyncio

    from aiokafka.errors import KafkaError

    from linkwatch.produce import endless_traffic, produce
    from linkwatch.simulate import generate
    from linkwatch.topics import ensure_topics

    if args.rate is not None and not args.rate > 0:
        raise ConfigError(f"--rate must be > 0, not {args.rate}")
    if args.batch is not None and args.batch < 1:
        raise ConfigError(f"--batch must be at least 1, not {args.batch}")
    settings = _settings(args.brokers)
    start = args.start if args.start is not None else int(time.time() * 1000)
    if args.forever:
        records = endless_traffic(
            seed=args.seed, users=args.users, bad_ratio=args.bad_ratio, start_ms=start
        )
    else:
        records = generate(
            seed=args.seed, users=args.users, start_ms=start, bad_ratio=args.bad_ratio
        )
    sent = 0

    def count(n: int) -> None:
        nonlocal sent
        sent = n

    async def run() -> None:
        await ensure_topics(settings, settings.input_topics.values(), settings.partitions)
        await produce(settings, records, rate=args.rate, on_sent=count, batch=args.batch or 1)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        print(f"\nstopped: {sent:,} records sent to {settings.brokers}", file=sys.stderr)
        return 0
    except (KafkaError, LinkWatchError) as exc:
        print(f"linkwatch: {settings.brokers}: {exc}", file=sys.stderr)
        return 1
    print(f"produced {sent:,} records to {settings.brokers}", file=sys.stderr)
    return 0


def _run_tail(args: argparse.Namespace) -> int:
    import asyncio

    from aiokafka.errors import KafkaError

    from linkwatch.tail import tail

    settings = _settings(args.brokers)
    try:
        asyncio.run(
            tail(
                settings,
                args.topic,
                from_beginning=not args.from_end,
                limit=args.limit,
                timeout=args.timeout,
                out=sys.stdout,
            )
        )
    except KeyboardInterrupt:
        return 0
    except (KafkaError, LinkWatchError) as exc:
        print(f"linkwatch: {settings.brokers}: {exc}", file=sys.stderr)
        return 1
    return 0


def _settings(brokers: str | None) -> Settings:
    """Settings from the environment, with the brokers given on the command line first."""
    from pydantic import ValidationError

    from linkwatch.settings import Settings

    try:
        return Settings(brokers=brokers) if brokers else Settings()
    except ValidationError as exc:
        raise ConfigError(f"invalid settings (LINKWATCH_* environment): {exc}") from None


def _run_worker(args: argparse.Namespace) -> int:
    from linkwatch.worker import main as worker_main

    worker_main()
    return 0  # not reached: the worker exits the process


def _run_dev(args: argparse.Namespace) -> int:
    from linkwatch.dev import run_dev

    return int(
        run_dev(rate_users_per_min=args.users_per_min, duration=args.duration, seed=args.seed)
    )


def _run_check_journeys(args: argparse.Namespace) -> int:
    journeys = load_journeys(args.journeys)
    for journey in journeys.journeys:
        steps = " → ".join(s.name for s in journey.steps)
        print(f"{journey.name}: {steps}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
