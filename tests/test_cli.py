"""The `linkwatch` command line, end to end on the sample data shipped in the repo."""

from __future__ import annotations

import base64
import gzip
import io
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from linkwatch.cli import main
from linkwatch.simulate import generate

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample-events.jsonl.gz"


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_sample_is_what_the_makefile_says_simulate_makes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--users 1500 --seed 7 --start 1732233600000" in makefile
    regenerated = b"".join(
        line + b"\n" for line in generate(users=1500, seed=7, start_ms=1_732_233_600_000)
    )
    assert gzip.decompress(SAMPLE.read_bytes()) == regenerated


def test_replay_of_the_sample_writes_triggers_dead_letters_and_a_consistent_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, dead = tmp_path / "triggers.jsonl", tmp_path / "dead.jsonl"
    code = main(
        ["replay", str(SAMPLE), "--out", str(out), "--dead-letters", str(dead), "--format", "json"]
    )
    assert code == 0
    report = orjson.loads(capsys.readouterr().out)
    events = report["events"]
    lines = gzip.decompress(SAMPLE.read_bytes()).splitlines()
    assert events["read"] == len(lines)
    assert events["valid"] + events["rejected"] == events["read"]
    assert events["rejected"] > 0
    assert events["duplicate"] > 0
    letters = read_jsonl(dead)
    assert len(letters) == events["rejected"]
    # Each dead letter carries the original bytes of the line it names.
    for letter in letters:
        source = letter["source"]
        assert isinstance(source, dict)
        assert base64.b64decode(str(letter["raw"])) == lines[int(source["line"]) - 1]
    records = read_jsonl(out)
    triggers = [r for r in records if r["type"] != "resolution"]
    resolutions = [r for r in records if r["type"] == "resolution"]
    assert len(triggers) == sum(report["triggers"].values())
    assert len(resolutions) == report["resolutions"] > 0
    assert len({t["trigger_id"] for t in triggers}) == len(triggers)
    # Each resolution cancels a drop-off of the same user and journey that came before it.
    dropoffs = {t["trigger_id"]: t for t in triggers if t["type"] == "dropoff"}
    position = {r["trigger_id"]: i for i, r in enumerate(records) if r["type"] != "resolution"}
    for i, resolution in enumerate(records):
        if resolution["type"] == "resolution":
            cancelled = dropoffs[resolution["trigger_id"]]
            assert position[resolution["trigger_id"]] < i
            assert (cancelled["user_id"], cancelled["journey"]) == (
                resolution["user_id"],
                resolution["journey"],
            )
    dropped = sum(step["dropped_off"] for j in report["journeys"].values() for step in j["steps"])
    # Every drop-off is either published or kept back by suppression (none is held at the
    # end: the sample's event times are daytime in the default timezone).
    withheld_dropoffs = sum(n for k, n in report["withheld"].items() if k.startswith("dropoff/"))
    assert withheld_dropoffs > 0
    assert report["triggers"]["dropoff"] + withheld_dropoffs == dropped
    causes = {t["cause"] for t in triggers}
    assert causes >= {"unfamiliar", "not_understood", "indifferent", "distrust", "distracted"}
    assert "dead_end" in causes


def test_close_open_fires_what_was_open_and_only_that(tmp_path: Path) -> None:
    plain, closed = tmp_path / "plain.jsonl", tmp_path / "closed.jsonl"
    assert main(["replay", str(SAMPLE), "--out", str(plain), "--format", "json"]) == 0
    assert (
        main(["replay", str(SAMPLE), "--out", str(closed), "--close-open", "--format", "json"]) == 0
    )
    plain_ids = {t["trigger_id"] for t in read_jsonl(plain)}
    closed_ids = {t["trigger_id"] for t in read_jsonl(closed)}
    assert plain_ids < closed_ids


def test_text_report_and_stdin(tmp_path: Path) -> None:
    data = gzip.decompress(SAMPLE.read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "linkwatch.cli", "replay", "-", "--out", "-"],
        input=data,
        capture_output=True,
        check=True,
    )
    assert b"journey cart_to_purchase" in result.stderr  # report goes to stderr ...
    assert result.stdout.count(b"\n") > 100  # ... when the triggers take stdout
    first = orjson.loads(result.stdout.splitlines()[0])
    assert {"trigger_id", "type", "cause", "remedy", "context"} <= set(first)


def test_plain_and_gzip_files_give_the_same_triggers(tmp_path: Path) -> None:
    plain = tmp_path / "events.jsonl"
    plain.write_bytes(gzip.decompress(SAMPLE.read_bytes()))
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"
    assert main(["replay", str(plain), "--out", str(a), "--format", "json"]) == 0
    assert main(["replay", str(SAMPLE), "--out", str(b), "--format", "json"]) == 0
    assert a.read_bytes() == gzip.decompress(b.read_bytes())


def test_bad_journeys_file_exits_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "j.toml"
    bad.write_text('[[journey]]\nname = "x"\n')
    assert main(["replay", str(SAMPLE), "--journeys", str(bad)]) == 2
    assert "j.toml" in capsys.readouterr().err


def test_missing_events_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "/nonexistent/events.jsonl"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_check_journeys_lists_the_default_journeys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-journeys"]) == 0
    assert "cart_to_purchase: cart → checkout → purchase" in capsys.readouterr().out


def test_simulate_writes_a_file(tmp_path: Path) -> None:
    out = tmp_path / "sim.jsonl"
    assert main(["simulate", "--out", str(out), "--users", "20", "--start", "1732233600000"]) == 0
    assert out.read_bytes().count(b"\n") > 20
    assert io.BytesIO(out.read_bytes()).readline().startswith(b"{")
