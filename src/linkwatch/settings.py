"""Service configuration, read once from the environment (prefix LINKWATCH_)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from linkwatch.codec import DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_EVENTS, BatchLimits
from linkwatch.events import MAX_RECORD_BYTES
from linkwatch.journeys import parse_duration

INPUT_KINDS = ("click", "share", "purchase", "group_chat")


class Settings(BaseSettings):
    """Every setting can be given as LINKWATCH_<NAME> (e.g. LINKWATCH_BROKERS)."""

    model_config = SettingsConfigDict(env_prefix="LINKWATCH_", frozen=True, extra="ignore")

    # -- Kafka connection -----------------------------------------------------------------
    brokers: str = Field(
        default="kafka://127.0.0.1:9092",
        description="Bootstrap servers, comma-separated (kafka://host:port or host:port)",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
    )
    sasl_username: str | None = Field(default=None, description="SASL user")
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (never logged)"
    )
    ssl_cafile: Path | None = Field(default=None, description="CA bundle to verify the broker")
    ssl_certfile: Path | None = Field(default=None, description="Client certificate (mTLS)")
    ssl_keyfile: Path | None = Field(default=None, description="Client key (mTLS)")

    # -- Topics ---------------------------------------------------------------------------
    topic_click: str = Field(default="events.click", description="Input: clicks")
    topic_share: str = Field(default="events.share", description="Input: shares")
    topic_purchase: str = Field(default="events.purchase", description="Input: purchases")
    topic_group_chat: str = Field(
        default="events.group_chat", description="Input: group-chat activity"
    )
    topic_triggers: str = Field(
        default="linkwatch.triggers", description="Re-engagement triggers and resolutions"
    )
    topic_dlq: str = Field(
        default="linkwatch.dlq", description="Dead letters: every rejected input record"
    )
    topic_ticks: str = Field(
        default="linkwatch.ticks", description="Internal: timer ticks that drive deadlines"
    )
    topic_signals: str = Field(
        default="linkwatch.signals",
        description="Internal: signals about links, groups and shares, keyed by entity",
    )
    topic_health: str = Field(
        default="linkwatch.health", description="Link and community alerts (health signals)"
    )
    topic_profiles: str = Field(
        default="linkwatch.profiles", description="Lifecycle tier changes (profile updates)"
    )
    partitions: int = Field(default=4, ge=1, le=1024, description="Partitions of every topic")
    replication_factor: int = Field(
        default=1, ge=1, description="Replication of topics the worker creates"
    )

    # -- Worker ---------------------------------------------------------------------------
    app_id: str = Field(default="linkwatch", description="Consumer group and table prefix")
    store: str = Field(default="memory://", description="memory:// or rocksdb://")
    data_dir: Path = Field(default=Path("linkwatch-data"), description="State directory")
    rocksdb_block_cache_mb: int = Field(
        default=64,
        ge=1,
        description="rocksdb:// only: read cache of each table partition's database "
        "(Faust's default is 2 GiB each)",
    )
    rocksdb_write_buffer_mb: int = Field(
        default=16,
        ge=1,
        description="rocksdb:// only: write buffer of each table partition's database, "
        "at most 3 of them (Faust's default is 64 MiB)",
    )
    state_cache_max: int = Field(
        default=50_000,
        ge=0,
        description="rocksdb:// only: user states held decoded in memory per partition, the "
        "least recently used beyond it read back from RocksDB when needed, and as many entity "
        "records per signals partition (besides those with signals waiting); 0: all of them",
    )
    fire_chunk: int = Field(
        default=10_000,
        ge=0,
        description="Deadlines and expiries a partition decides at most before delivering "
        "their triggers and writing their states, when its watermark jumps past many at once "
        "(a drained backlog): bounds the memory that takes (on rocksdb:// with "
        "LINKWATCH_STATE_CACHE_MAX, also the entity records a level's watermark wakes); 0: "
        "all at once",
    )
    entity_held_max: int = Field(
        default=200_000,
        ge=0,
        description="rocksdb:// with LINKWATCH_STATE_CACHE_MAX only: most entity records this "
        "worker may hold that cannot be let go (changed since the last write, or with signals "
        "waiting for a level's watermark); past it the input topics are paused while marks "
        "on their way let some go (a backlog drains faster than the levels follow); 0: no "
        "bound",
    )
    journeys_file: Path | None = Field(
        default=None, description="Journeys TOML; unset: the built-in journeys"
    )
    reload_interval: float = Field(
        default=5.0,
        ge=0,
        description="Seconds between checks of the journeys file for changes; 0: never reload",
    )
    web_host: str = Field(
        default="127.0.0.1", description="Web server address (/metrics, /healthz, /readyz)"
    )
    web_port: int = Field(default=6066, ge=0, le=65535, description="Web server port")
    allowed_lateness: str | None = Field(
        default=None, description="Overrides the journeys file's allowed_lateness"
    )
    idle_timeout: str = Field(
        default="5s",
        description="A partition with no events this long advances its watermark by the clock",
    )
    tick_interval: str = Field(default="250ms", description="How often deadlines are checked")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="DEBUG, INFO, WARNING or ERROR"
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="json (one object per line) or text"
    )
    log_hash_key: SecretStr | None = Field(
        default=None,
        description=(
            "Key of the hash that stands for user ids in logs, so lines correlate without "
            "naming anyone; unset: derived from the app id, which anyone can recompute, so "
            "a secret key is what stops reversing the hashes by trying every user id"
        ),
    )
    # Consumer-group timing: short enough that a restarted worker re-joins quickly.
    session_timeout: float = Field(
        default=10.0, gt=0, description="Seconds without a heartbeat before a worker is out"
    )
    heartbeat_interval: float = Field(default=1.0, gt=0, description="Seconds between heartbeats")
    broker_request_timeout: float = Field(
        default=40.0, gt=0, description="Seconds a broker request may take"
    )
    producer_request_timeout: float = Field(
        default=120.0,
        gt=0,
        description="Seconds a record may wait for the broker (unanswered, or the broker "
        "unreachable) before it is sent again; Faust's default is 20 minutes",
    )
    producer_linger: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Seconds the producer waits to gather records into one request per "
        "partition (fewer, larger requests: less CPU per record in worker and broker, at the "
        "cost of this much added latency)",
    )
    producer_buffer_max: int = Field(
        default=10_000,
        ge=1,
        description="Records the worker's send buffer (table writes on their way to the "
        "producer) may hold before the worker stops taking input until it drains; Faust's "
        "100 stopped the input at every commit, whose writes come at once",
    )
    commit_interval: float = Field(default=1.0, gt=0, description="Seconds between offset commits")
    fetch_max_wait: float = Field(
        default=0.1,
        gt=0,
        le=10,
        description="Seconds the broker may hold the worker's fetch while no record is there "
        "(Faust hard-codes 1.5; a broker that answers a held fetch late adds up to that to a "
        "record's latency)",
    )
    batch_max: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Most records an agent handles at once: their outputs are delivered "
        "together, then each changed state is written once",
    )
    batch_within: float = Field(
        default=0.02,
        gt=0,
        le=5,
        description="Seconds an agent waits for a batch to fill before it handles what it has "
        "(bounds the latency batching adds)",
    )
    batch_record_max_bytes: int = Field(
        default=DEFAULT_BATCH_MAX_BYTES,
        ge=MAX_RECORD_BYTES,
        le=64 * 1024 * 1024,
        description="Most bytes in one input record that carries a batch of events (a JSON "
        "array or NDJSON); a larger one is dead-lettered whole as too_large",
    )
    batch_record_max_events: int = Field(
        default=DEFAULT_BATCH_MAX_EVENTS,
        ge=1,
        le=100_000,
        description="Most events in one batch record; one with more is dead-lettered whole as "
        "too_many_events",
    )
    recovery_stall_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a table recovery may read nothing from a changelog partition it "
        "has not finished before that partition is sought again",
    )
    shutdown_timeout: float = Field(default=10.0, gt=0, description="Bound on SIGTERM shutdown")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop",
        description="The worker's event loop: uvloop (libuv; cheaper per record) or asyncio's",
    )
    gc_threshold: str = Field(
        default="50000,20,20",
        description="The worker's garbage-collector thresholds (gc.set_threshold; Python's are "
        "700,10,10): collecting less often saves CPU on the states it holds",
    )

    @field_validator("idle_timeout", "tick_interval", "allowed_lateness")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("gc_threshold")
    @classmethod
    def _gc_threshold(cls, value: str) -> str:
        parts = value.split(",")
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts) or int(parts[0]) < 1:
            raise ValueError(f"three whole numbers, the first at least 1 (700,10,10): {value!r}")
        return value

    @property
    def gc_thresholds(self) -> tuple[int, int, int]:
        first, second, third = (int(part) for part in self.gc_threshold.split(","))
        return first, second, third

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if value.split("://", 1)[0] not in {"memory", "rocksdb"}:
            raise ValueError("store must be memory:// or rocksdb://")
        return value

    @property
    def on_rocksdb(self) -> bool:
        """Tables on RocksDB (`store` rocksdb://) rather than in memory."""
        return self.store.split("://", 1)[0] == "rocksdb"

    @property
    def input_topics(self) -> dict[str, str]:
        """kind → topic name."""
        return {
            "click": self.topic_click,
            "share": self.topic_share,
            "purchase": self.topic_purchase,
            "group_chat": self.topic_group_chat,
        }

    @property
    def batch_limits(self) -> BatchLimits:
        return BatchLimits(self.batch_record_max_bytes, self.batch_record_max_events)

    @property
    def idle_timeout_ms(self) -> int:
        return parse_duration(self.idle_timeout)

    @property
    def tick_interval_s(self) -> float:
        return parse_duration(self.tick_interval) / 1000

    @property
    def stall_ms(self) -> int:
        """The part of a gap between reads (records or ticks) beyond this is time the worker
        could not read (see `PartitionProcessor._read_at`): a few missed ticks, at least a
        second."""
        return max(1000, 4 * parse_duration(self.tick_interval))

    @property
    def bootstrap_servers(self) -> list[str]:
        """host:port list for aiokafka (Faust's kafka:// scheme removed)."""
        servers = []
        for part in self.brokers.split(","):
            part = part.strip()
            if part:
                servers.append(part.split("://", 1)[-1])
        return servers

    @property
    def faust_broker(self) -> str:
        return ";".join(f"kafka://{server}" for server in self.bootstrap_servers)

    def namespaced(self, tag: str, **changes: Any) -> Settings:
        """A copy whose app id and every topic start with `tag`: runs sharing a broker (tests,
        benchmarks, a second environment) never see each other's records or state."""
        topics = {
            name: f"{tag}.{value}"
            for name, value in self.model_dump().items()
            if name.startswith("topic_")
        }
        return self.model_copy(update={"app_id": f"{self.app_id}-{tag}", **topics, **changes})

    def to_env(self) -> dict[str, str]:
        """These settings as LINKWATCH_* variables, e.g. for a worker process we start."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"LINKWATCH_{name.upper()}"] = str(value)
        return env

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.security_protocol not in {"SSL", "SASL_SSL"}:
            return None
        context = ssl.create_default_context(
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None
        )
        if self.ssl_certfile:
            context.load_cert_chain(
                str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None
            )
        return context

    def aiokafka_options(self) -> dict[str, Any]:
        """Connection options for aiokafka producers/consumers/admin clients."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return options


def settings_table() -> str:
    """The README's settings table, generated from this model (a test keeps them equal)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.get_default()
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `LINKWATCH_{name.upper()}` | {shown} | {info.description or ''} |")
    return "\n".join(rows)
