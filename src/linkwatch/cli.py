"""The `linkwatch` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import orjson

from linkwatch import __version__
from linkwatch.errors import ConfigError
from linkwatch.journeys import load_journeys

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
        "--close-open",
        action="store_true",
        help="at end of input, close every open instance at its deadline (fires their triggers)",
    )
    replay.add_argument(
        "--format", choices=["text", "json"], default="text", help="report format (stderr/stdout)"
    )
    replay.set_defaults(run=_run_replay)

    schemas = sub.add_parser("schemas", help="write the JSON Schemas generated from the models")
    schemas.add_argument("--dir", type=Path, default=DEFAULT_SCHEMAS_DIR)
    schemas.add_argument("--check", action="store_true", help="fail if the files are out of sync")
    schemas.set_defaults(run=_run_schemas)

    simulate = sub.add_parser("simulate", help="write synthetic traffic as JSON Lines")
    simulate.add_argument("--out", required=True, help="output file (.gz allowed)")
    simulate.add_argument("--users", type=int, default=500)
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--bad-ratio", type=float, default=0.01)
    simulate.add_argument(
        "--start", type=int, help="event time of the first event, epoch ms (default: now)"
    )
    simulate.set_defaults(run=_run_simulate)

    check = sub.add_parser("check-journeys", help="validate a journeys file and print a summary")
    check.add_argument("journeys", type=Path, nargs="?")
    check.set_defaults(run=_run_check_journeys)
    return parser


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
        lines = progress_lines(stream, underlying(stream), file_size(args.events))
        result = replay_lines(
            lines,
            journeys,
            source_name=args.events,
            on_trigger=triggers.write if triggers else None,
            on_dead_letter=dead.write if dead else None,
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

    start = args.start if args.start is not None else int(time.time() * 1000)
    count = write_jsonl(
        Path(args.out),
        generate(seed=args.seed, users=args.users, start_ms=start, bad_ratio=args.bad_ratio),
    )
    print(f"wrote {count:,} records to {args.out}", file=sys.stderr)
    return 0


def _run_check_journeys(args: argparse.Namespace) -> int:
    journeys = load_journeys(args.journeys)
    for journey in journeys.journeys:
        steps = " → ".join(s.name for s in journey.steps)
        print(f"{journey.name}: {steps}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
