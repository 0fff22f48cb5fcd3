"""Structured logs: one JSON object per line (default) or plain text for a terminal.

User ids never appear in logs: `user_ref` gives a short keyed hash of one instead, the same for
the same user under the same key, so an operator can follow a user across lines (and find the
lines of a user they were told about: `user_ref` of the id, with the worker's key).
"""

from __future__ import annotations

import hashlib
import logging
import traceback
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from linkwatch.settings import Settings

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}
_PERSON = b"lw-user-ref"  # domain separation: the key hashes nothing but user ids
USER_REF_BYTES = 8  # 16 hex digits: collisions negligible below ~100 million user ids


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if extra:
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def log_handler(fmt: str) -> logging.Handler:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def user_ref_key(settings: Settings) -> bytes:
    """The key for `user_ref`: from `log_hash_key`, else derived from the app id.

    A derived key only keeps ids out of casual sight: the app id is no secret, so whoever
    reads the logs can hash candidate ids and match them. A secret `log_hash_key` stops that."""
    if settings.log_hash_key is not None:
        secret = settings.log_hash_key.get_secret_value().encode()
    else:
        secret = b"app-id:" + settings.app_id.encode()
    # Hashed to a fixed size: blake2b keys are at most 64 bytes, secrets may be longer.
    return hashlib.blake2b(secret, digest_size=32, person=_PERSON).digest()


def user_ref(user_id: str, key: bytes) -> str:
    """What a log line says instead of `user_id`: `u#` and 16 hex digits of a keyed blake2b."""
    digest = hashlib.blake2b(user_id.encode(), key=key, digest_size=USER_REF_BYTES, person=_PERSON)
    return f"u#{digest.hexdigest()}"


def traceback_without_text(exc: BaseException) -> str:
    """The stack of `exc` and its type, not its message: an error's text may quote the data
    it failed on (a user id, a whole record), and logs must not carry those."""
    frames = traceback.extract_tb(exc.__traceback__)
    return "".join(traceback.format_list(frames)) + type(exc).__qualname__
