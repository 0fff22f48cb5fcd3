"""Real public e-commerce data as LinkWatch input records, for demos, benchmarks and tests.

Synthetic traffic only shows what its author imagined; these converters turn real behaviour
(REES46 and Taobao, see shared/data/SOURCE.md) into the event contract: views and carts become
clicks on product and cart pages, purchases become purchases. Every id is derived from the row,
so a conversion is reproducible byte for byte.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from datetime import datetime
from itertools import groupby
from pathlib import Path
from typing import Any, Final

import orjson

Record = dict[str, Any]

REES46_COLUMNS: Final = (
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
)
TAOBAO_COLUMNS: Final = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
# The Taobao data set covers 2017-11-25 to 2017-12-03 China time. A record outside that window
# has a broken clock; it is placed where it was logged (see `taobao_events`).
TAOBAO_WINDOW_S: Final = (1_511_539_200, 1_512_316_800)
# Fields that identify a person or their doings: `amplify` makes them distinct per copy.
POPULATION_FIELDS: Final = (
    "event_id",
    "user_id",
    "session_id",
    "order_id",
    "share_id",
    "ref_share_id",
)


def rees46_events(path: Path) -> Iterator[bytes]:
    """REES46 CSV rows → click (view, cart) and purchase records, in file (= time) order."""
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        _check_header(path, next(reader, None), REES46_COLUMNS)
        for row in reader:
            line = reader.line_num
            if len(row) != len(REES46_COLUMNS):
                raise ValueError(f"{path}:{line}: expected {len(REES46_COLUMNS)} fields")
            when, event_type, product, _, category_code, brand, price, user, session = row
            record: Record = {
                "event_id": f"rees46-{line}",
                "user_id": f"r{user}",
                "ts": _rees46_ms(path, line, when),
                "channel": "web",
                "props": _non_empty(product_id=product, category_code=category_code, brand=brand),
            }
            if session:
                record["session_id"] = session
            if event_type == "purchase":
                order = _derived_id(user, session, product, when)
                record |= {"kind": "purchase", "order_id": f"rees46-{order}", "amount": price}
                record["currency"] = "USD"
            elif event_type == "view":
                record |= _click("product", f"p{product}", f"https://shop.example/p/{product}")
            elif event_type == "cart":
                cart_url = f"https://shop.example/cart?add={product}"
                record |= _click("cart", f"cart-p{product}", cart_url)
            else:
                raise ValueError(f"{path}:{line}: unknown event_type {event_type!r}")
            yield orjson.dumps(record)


def taobao_events(path: Path) -> Iterator[bytes]:
    """Taobao CSV rows → click (pv, cart, fav) and purchase (buy) records, in event-time order.

    The file is grouped by user, so rows are sorted by time here. A record outside the data
    set's window (the file has one, dated 2017-09-11) keeps its own timestamp but is placed
    just before the same user's next record, as if it had been logged then: LinkWatch sees it
    arrive late, as it would live, instead of it opening the stream and dragging the watermark
    back months. Purchases carry no price in this data set: amount is "0.00" with
    `props.amount_unknown = true`.
    """
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        _check_header(path, next(reader, None), TAOBAO_COLUMNS)
        rows: list[tuple[int, list[str]]] = []
        for row in reader:
            if len(row) != len(TAOBAO_COLUMNS):
                raise ValueError(f"{path}:{reader.line_num}: expected {len(TAOBAO_COLUMNS)} fields")
            rows.append((reader.line_num, row))
    placed: list[tuple[int, int, Record]] = []  # (logged at, line, record)
    for _, user_rows in groupby(rows, key=lambda numbered: numbered[1][0]):
        history = [(line, _taobao_record(path, line, row)) for line, row in user_rows]
        times = [int(record["ts"]) for _, record in history]
        for index, (line, record) in enumerate(history):
            placed.append((_logged_at(times, index), line, record))
    placed.sort(key=lambda item: (item[0], item[1]))
    for _, _, record in placed:
        yield orjson.dumps(record)


def amplify(records: list[bytes], copies: int) -> Iterator[bytes]:
    """Each record `copies` times, copy n with "#n" appended to its people's ids (user, event,
    session, order, share), so the copies are distinct populations living the same history.
    Copies of a record are adjacent, so time-ordered input stays time-ordered. A record that is
    not a JSON object (a deliberately bad one) is repeated unchanged."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1, not {copies}")
    for raw in records:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            for _ in range(copies):
                yield raw
            continue
        ids = {
            field: data[field] for field in POPULATION_FIELDS if isinstance(data.get(field), str)
        }
        for copy in range(copies):
            data.update({field: f"{value}#{copy}" for field, value in ids.items()})
            yield orjson.dumps(data)


# -- helpers -------------------------------------------------------------------------------------


def _check_header(path: Path, header: list[str] | None, expected: tuple[str, ...]) -> None:
    if header is None or tuple(header) != expected:
        raise ValueError(f"{path}: header must be {','.join(expected)}, not {header}")


def _rees46_ms(path: Path, line: int, text: str) -> int:
    """'2019-10-01 00:00:00 UTC' → epoch ms."""
    if not text.endswith(" UTC"):
        raise ValueError(f"{path}:{line}: event_time {text!r} is not 'YYYY-MM-DD HH:MM:SS UTC'")
    try:
        moment = datetime.fromisoformat(text.removesuffix(" UTC") + "+00:00")
    except ValueError:
        raise ValueError(f"{path}:{line}: event_time {text!r} is not a time") from None
    return int(moment.timestamp()) * 1000


def _taobao_record(path: Path, line: int, row: list[str]) -> Record:
    user, item, category, behavior, seconds = row
    if not seconds.isdigit():
        raise ValueError(f"{path}:{line}: timestamp {seconds!r} is not Unix seconds")
    record: Record = {
        "event_id": f"taobao-{line}",
        "user_id": f"t{user}",
        "ts": int(seconds) * 1000,
        "channel": "app",
        "props": _non_empty(item_id=item, category_id=category),
    }
    item_url = f"https://shop.example/i/{item}"
    if behavior == "pv":
        record |= _click("product", f"i{item}", item_url)
    elif behavior == "fav":
        record |= _click("detail", f"i{item}", item_url)
        record["props"]["action"] = "fav"
    elif behavior == "cart":
        record |= _click("cart", f"cart-i{item}", f"https://shop.example/cart?add={item}")
    elif behavior == "buy":
        order = _derived_id(user, item, seconds)
        record |= {"kind": "purchase", "order_id": f"taobao-{order}", "amount": "0.00"}
        record["currency"] = "CNY"
        record["props"]["amount_unknown"] = True
    else:
        raise ValueError(f"{path}:{line}: unknown behavior_type {behavior!r}")
    return record


def _in_taobao_window(ts_ms: int) -> bool:
    start, end = TAOBAO_WINDOW_S
    return start * 1000 <= ts_ms < end * 1000


def _logged_at(times: list[int], index: int) -> int:
    """When one of a user's records was logged: its own time, or for a broken clock the time
    of the user's next (else previous) record with a sound one."""
    own = times[index]
    if _in_taobao_window(own):
        return own
    later = (ts for ts in times[index + 1 :] if _in_taobao_window(ts))
    earlier = (ts for ts in reversed(times[:index]) if _in_taobao_window(ts))
    return next(later, next(earlier, own))


def _click(page: str, link_id: str, url: str) -> Record:
    return {"kind": "click", "page": page, "link_id": link_id, "url": url}


def _non_empty(**props: str) -> dict[str, str]:
    return {key: value for key, value in props.items() if value}


def _derived_id(*parts: str) -> str:
    """A short stable id from the fields that identify a real-world thing (e.g. an order)."""
    return hashlib.blake2b("|".join(parts).encode(), digest_size=8).hexdigest()
