"""Security between the worker and its broker, end to end: SASL/SCRAM and TLS logins that work,
refusals whose log says why without the secret, and no user id in metric labels or the log.

Tansu 0.6.0, the dev and test broker, can carry neither SCRAM nor TLS; the `test_tansu_*` tests
pin the evidence (summed up in `linkwatch.broker`'s docstring). So the SCRAM and TLS runs put
`SecurityFront` between the clients and Tansu: a listener written here with a Kafka listener's
rules (TLS by Python's ssl; SCRAM-SHA-256/512 as RFC 5802 has it, keeping only salted keys;
nothing but ApiVersions and the SASL requests answered before a login; error 58 for a bad
proof) that forwards every byte after the login to the real Tansu, which advertises the
front's port so that no client goes around it. What that proves is LinkWatch's side: the
settings reach every Kafka client of the worker (Faust's and ours), which log in and verify the
broker as configured, and records flow through the broker as without security.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import ssl
import struct
import subprocess
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson
import pytest
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, SaslAuthenticationFailed
from aiokafka.protocol.admin import SaslAuthenticateRequest, SaslHandShakeRequest
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.types import (
    CompactArray,
    CompactBytes,
    CompactString,
    Int8,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

from linkwatch.broker import BrokerError, EmbeddedBroker, close_conn, free_port, wait_closed
from linkwatch.produce import produce
from linkwatch.settings import Settings
from linkwatch.simulate import generate
from linkwatch.topics import ensure_topics
from linkwatch.triggers import Trigger
from tests.integration.test_live import oracle
from tests.integration.workers import (
    FAST,
    START,
    WorkerProcess,
    prepare,
    read_topic,
    run,
    sum_metric,
    trigger_ids,
    wait_for,
)

OPENSSL = "/usr/bin/openssl"
USER = "lw-worker"
PASSWORD = "pw-" + secrets.token_hex(8)  # random, so finding it in a log means it leaked


# -- Certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path  # signed the broker's and the client's certificates
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_ca: Path  # a CA that signed nothing here


def _openssl(*args: str | Path) -> None:
    subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}"),
    )
    return cert, key


def _sign(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, request = (directory / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
    config = directory / f"{name}.ext"
    config.write_text(extensions)
    _openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-keyout", key, "-out", request, "-subj", f"/CN={name}"),
    )
    _openssl(
        *("x509", "-req", "-in", request, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial"),
        *("-out", cert, "-days", "2", "-extfile", config),
    )
    return cert, key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("tls")
    ca = _make_ca(directory, "linkwatch-test-ca")
    server = _sign(
        directory,
        "broker",
        ca,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    client = _sign(directory, "worker", ca, "extendedKeyUsage=clientAuth\n")
    stranger, _ = _make_ca(directory, "stranger-ca")
    return Certificates(ca[0], *server, *client, stranger)


# -- A TLS and SASL/SCRAM front for the plain-text broker --------------------------------------

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58
HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}


class ScramUser:
    """What a SCRAM server keeps of a password (RFC 5802): salted keys, never the password."""

    def __init__(self, mechanism: str, password: str, iterations: int = 4096) -> None:
        self.mechanism = mechanism
        self.hash = HASHES[mechanism]
        self.salt = secrets.token_bytes(16)
        self.iterations = iterations
        salted = hashlib.pbkdf2_hmac(self.hash().name, password.encode(), self.salt, iterations)
        self.stored_key = self.hash(self.hmac(salted, b"Client Key")).digest()
        self.server_key = self.hmac(salted, b"Server Key")

    def hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self.hash).digest()


class ScramLogin:
    """The server side of one SCRAM login: two client messages, two answers (None: refused)."""

    def __init__(self, mechanism: str, users: Mapping[str, ScramUser]) -> None:
        self.mechanism = mechanism
        self.users = users
        self.user: ScramUser | None = None
        self.client_first = self.server_first = self.nonce = ""

    def answer(self, message: str) -> str | None:
        return self._first(message) if self.user is None else self._final(message)

    def _first(self, message: str) -> str | None:
        _, _, bare = message.split(",", 2)  # the gs2 header: no channel binding, no authzid
        fields = dict(part.split("=", 1) for part in bare.split(","))
        user = self.users.get(fields["n"].replace("=2C", ",").replace("=3D", "="))
        if user is None or user.mechanism != self.mechanism:
            return None
        self.user, self.client_first = user, bare
        self.nonce = fields["r"] + secrets.token_urlsafe(18)
        self.server_first = f"r={self.nonce},s={base64.b64encode(user.salt).decode()}"
        self.server_first += f",i={user.iterations}"
        return self.server_first

    def _final(self, message: str) -> str | None:
        assert self.user is not None
        without_proof, _, proof = message.rpartition(",p=")
        if dict(part.split("=", 1) for part in without_proof.split(",")).get("r") != self.nonce:
            return None
        auth_message = f"{self.client_first},{self.server_first},{without_proof}".encode()
        signature = self.user.hmac(self.user.stored_key, auth_message)
        proof_bytes = base64.b64decode(proof)
        if len(proof_bytes) != len(signature):
            return None
        client_key = bytes(a ^ b for a, b in zip(proof_bytes, signature, strict=True))
        if not hmac.compare_digest(self.user.hash(client_key).digest(), self.user.stored_key):
            return None
        return "v=" + base64.b64encode(self.user.hmac(self.user.server_key, auth_message)).decode()


class SecurityFront:
    """TLS and/or SASL/SCRAM in front of a plain-text broker, on its own port and thread.

    `users` maps a name to (mechanism, password); None: no SASL. `refused` says why each
    refused login was refused."""

    def __init__(
        self,
        upstream_port: int,
        *,
        tls: ssl.SSLContext | None = None,
        users: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.tls = tls
        self.users = None if users is None else {n: ScramUser(*login) for n, login in users.items()}
        self.refused: list[str] = []
        self._loop = asyncio.new_event_loop()
        # Failed TLS handshakes are what some tests are about: no tracebacks on stderr for them.
        self._loop.set_exception_handler(lambda loop, context: None)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        serving = asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.tls)
        self._server = asyncio.run_coroutine_threadsafe(serving, self._loop).result(timeout=10)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        async def close() -> None:
            self._server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            # Let each connection's `finally` close its sockets before the loop stops: a
            # socket left open is collected later, in whatever test runs then, as an
            # unraisable ResourceWarning (seen in CI).
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        try:
            if self.users is None or await self._login(reader, writer, *upstream):
                await asyncio.gather(_copy(reader, upstream[1]), _copy(upstream[0], writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for stream in (writer, upstream[1]):
                await wait_closed(stream)

    async def _login(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        """Kafka's rules: before a login, only ApiVersions and the SASL requests are answered;
        anything else closes the connection, as does a refused login."""
        assert self.users is not None
        login: ScramLogin | None = None
        while True:
            frame = await _read_frame(reader)
            api_key, version, correlation, client_id_length = struct.unpack(">hhih", frame[:10])
            body = frame[10 + max(client_id_length, 0) :]
            if api_key == API_VERSIONS:  # the broker's own answer: it knows its versions
                up_writer.write(struct.pack(">i", len(frame)) + frame)
                _send(writer, await _read_frame(up_reader))
            elif api_key == SASL_HANDSHAKE:
                mechanism = _read_string(body)
                login = ScramLogin(mechanism, self.users) if mechanism in HASHES else None
                error = UNSUPPORTED_SASL_MECHANISM if login is None else 0
                enabled = b"".join(map(_string, HASHES))
                _answer(writer, correlation, struct.pack(">hi", error, len(HASHES)) + enabled)
                if login is None:
                    self.refused.append(f"unsupported mechanism {mechanism}")
                    return False
            elif api_key == SASL_AUTHENTICATE and login is not None and version <= 1:
                (length,) = struct.unpack(">i", body[:4])
                reply = login.answer(body[4 : 4 + length].decode())
                if reply is None:
                    message = (
                        "Authentication failed during authentication due to invalid "
                        f"credentials with SASL mechanism {login.mechanism}"
                    )
                    self.refused.append(message)
                    response = _auth_response(version, SASL_AUTHENTICATION_FAILED, message, b"")
                    _answer(writer, correlation, response)
                    await writer.drain()
                    return False
                _answer(writer, correlation, _auth_response(version, 0, None, reply.encode()))
                if reply.startswith("v="):
                    return True
            else:
                self.refused.append(f"request {api_key} before a login")
                return False


def _auth_response(version: int, error: int, message: str | None, token: bytes) -> bytes:
    text = struct.pack(">h", -1) if message is None else _string(message)
    response = struct.pack(">h", error) + text + struct.pack(">i", len(token)) + token
    return response + (struct.pack(">q", 0) if version >= 1 else b"")  # v1: session lifetime


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def _read_string(data: bytes) -> str:
    (length,) = struct.unpack(">h", data[:2])
    return data[2 : 2 + length].decode()


def _send(writer: asyncio.StreamWriter, frame: bytes) -> None:
    writer.write(struct.pack(">i", len(frame)) + frame)


def _answer(writer: asyncio.StreamWriter, correlation: int, body: bytes) -> None:
    _send(writer, struct.pack(">i", correlation) + body)


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    finally:
        sink.close()


# -- Secured runs -----------------------------------------------------------------------------


@contextmanager
def secured(
    tmp_path: Path,
    certificates: Certificates,
    protocol: str,
    mechanism: str | None = None,
    *,
    client_certificate: bool = False,
) -> Iterator[tuple[Settings, SecurityFront]]:
    """Tansu behind a front that speaks `protocol`, and the Settings of a client that logs in
    (as USER with PASSWORD and `mechanism`) and trusts the CA, as its tests need them."""
    tls: ssl.SSLContext | None = None
    if protocol in {"SSL", "SASL_SSL"}:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(certificates.server_cert, certificates.server_key)
        if client_certificate:  # mutual TLS: the broker verifies the client too
            tls.verify_mode = ssl.CERT_REQUIRED
            tls.load_verify_locations(certificates.ca)
    users = {USER: (mechanism, PASSWORD)} if mechanism else None
    tansu_port = free_port()
    with SecurityFront(tansu_port, tls=tls, users=users) as front:
        login: dict[str, Any] = {"security_protocol": protocol}
        if mechanism:
            login |= {"sasl_mechanism": mechanism, "sasl_username": USER, "sasl_password": PASSWORD}
        if tls is not None:
            login["ssl_cafile"] = certificates.ca
        if client_certificate:
            login |= {
                "ssl_certfile": certificates.client_cert,
                "ssl_keyfile": certificates.client_key,
            }
        settings = Settings(brokers=f"127.0.0.1:{front.port}", **login)
        broker = EmbeddedBroker(
            port=tansu_port,
            advertised_port=front.port,
            client_options=_security_options(settings),
            log_dir=tmp_path / "broker",
        )
        with broker:
            tag = f"t{uuid.uuid4().hex[:8]}"
            yield settings.namespaced(tag, data_dir=tmp_path / "state"), front


def _security_options(settings: Settings) -> dict[str, Any]:
    return {k: v for k, v in settings.aiokafka_options().items() if k != "bootstrap_servers"}


def _with(settings: Settings, **changes: Any) -> Settings:
    """A validated copy (model_copy would keep a str where a SecretStr belongs)."""
    return Settings.model_validate(settings.model_dump() | changes)


async def _connect(settings: Settings) -> Any:
    """One connection to the first bootstrap server as `settings` say, login included."""
    host, port = settings.bootstrap_servers[0].rsplit(":", 1)
    options = _security_options(settings)
    return await create_conn(host, int(port), request_timeout_ms=5_000, **options)


async def _metadata_with(settings: Settings) -> Any:
    conn = await _connect(settings)
    try:
        return await conn.send(MetadataRequest([]))
    finally:
        await close_conn(conn)


def _refused_start(worker: WorkerProcess) -> str:
    """Start a worker that must not become ready; its log once it has given up."""
    try:
        with pytest.raises(AssertionError, match="exited early"):
            worker.start(ready_timeout=120)
    finally:
        worker.kill()
    return worker.log_path.read_text()


def _user_ids(lines: list[bytes]) -> re.Pattern[str]:
    """A pattern matching any of the user ids in `lines`, alone (not inside a longer word,
    nor as the tail of an escape such as \\u0001)."""
    ids = sorted({orjson.loads(line)["user_id"] for line in lines}, key=len, reverse=True)
    return re.compile(r"(?<![\w\\])(?:" + "|".join(map(re.escape, ids)) + r")(?!\w)")


# -- Tansu 0.6.0's own security, as far as it goes --------------------------------------------


class AlterScramResponse(Response):
    API_KEY = 51
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            CompactArray(
                ("user", CompactString("utf-8")),
                ("error_code", Int16),
                ("error_message", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class AlterScramRequestV0(RequestStruct):
    """AlterUserScramCredentials v0 (what `tansu user create` sends); aiokafka has none."""

    FLEXIBLE_VERSION = True
    API_KEY = 51
    API_VERSION = 0
    RESPONSE_TYPE = AlterScramResponse
    SCHEMA = Schema(
        (
            "deletions",
            CompactArray(
                ("name", CompactString("utf-8")), ("mechanism", Int8), ("tags", TaggedFields)
            ),
        ),
        (
            "upsertions",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("mechanism", Int8),
                ("iterations", Int32),
                ("salt", CompactBytes),
                ("salted_password", CompactBytes),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class AlterScramRequest(Request[AlterScramRequestV0]):
    API_KEY = 51

    def __init__(self, name: str, password: str) -> None:
        self.upsertion = (name, 1, 4096, salt := secrets.token_bytes(16))  # 1: SCRAM-SHA-256
        self.salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 4096)

    def build(self, request_struct_class: type[AlterScramRequestV0]) -> AlterScramRequestV0:
        return request_struct_class([], [(*self.upsertion, self.salted, {})], {})


async def _failed_login(port: int, user: str) -> tuple[Any, Any]:
    """A connection that ran a SCRAM exchange as `user` with a made-up proof, and the
    broker's last answer to it."""
    conn = await create_conn("127.0.0.1", port, request_timeout_ms=5_000)
    try:
        await conn.send(SaslHandShakeRequest("SCRAM-SHA-256"))
        first = await conn.send(SaslAuthenticateRequest(f"n,,n={user},r=nonce".encode()))
        fields = dict(p.split("=", 1) for p in first.sasl_auth_bytes.decode().split(","))
        final = f"c=biws,r={fields['r']},p={base64.b64encode(bytes(32)).decode()}"
        return conn, await conn.send(SaslAuthenticateRequest(final.encode()))
    except BaseException:
        await close_conn(conn)
        raise


def test_tansu_with_authentication_refuses_clients_without_a_login(tmp_path: Path) -> None:
    with EmbeddedBroker(authentication=True, log_dir=tmp_path / "broker") as broker:
        settings = Settings(brokers=broker.url).namespaced("t", data_dir=tmp_path / "state")
        with pytest.raises(KafkaConnectionError):
            run(ensure_topics(settings, [settings.topic_click], 1))
        log = _refused_start(WorkerProcess(settings, tmp_path, name="no-login"))
    assert "Unable to bootstrap" in log  # all a Kafka client learns: the broker hung up
    assert "NotAuthenticated" in broker.log_path.read_text()  # the broker's side says why


def test_tansu_0_6_serves_a_client_whose_scram_login_failed(tmp_path: Path) -> None:
    """Why Tansu's authentication is no security boundary (and SCRAM has to be tested behind
    a front): a login for a user that does not exist ends in `e=unknown-user`, but with no
    error code, and the connection is then served as if the login had passed."""

    async def failed_login_then_metadata(port: int) -> tuple[Any, Any]:
        conn, final = await _failed_login(port, "nobody")
        try:
            return final, await conn.send(MetadataRequest([]))
        finally:
            await close_conn(conn)

    with EmbeddedBroker(authentication=True, log_dir=tmp_path / "broker") as broker:
        final, metadata = run(failed_login_then_metadata(broker.port))
    assert final.sasl_auth_bytes == b"e=unknown-user"
    assert final.error_code == 0  # Kafka says 58 (SASL authentication failed) and hangs up
    assert [(b[1], b[2]) for b in metadata.brokers] == [("127.0.0.1", broker.port)]


def test_tansu_0_6_keeps_no_scram_credential(tmp_path: Path) -> None:
    """Why no client can log in to Tansu 0.6.0: `tansu user create` is refused as
    unauthenticated, and a credential sent on a connection that got in anyway (see above) is
    accepted, then not found by the next login."""

    async def create_then_log_in(port: int) -> tuple[Any, Any]:
        conn, _ = await _failed_login(port, "nobody")
        try:
            created = await conn.send(AlterScramRequest(USER, PASSWORD))
        finally:
            await close_conn(conn)
        conn, final = await _failed_login(port, USER)
        await close_conn(conn)
        return created, final

    broker = EmbeddedBroker(authentication=True, log_dir=tmp_path / "broker")
    refusal = pytest.raises(BrokerError, match="user create 'lw-worker' failed")
    with broker:
        with refusal as refused:
            broker.create_user(USER, PASSWORD, "SCRAM-SHA-256")
        created, final = run(create_then_log_in(broker.port))
    assert PASSWORD not in str(refused.value)
    assert "NotAuthenticated" in broker.log_path.read_text()
    assert [(r[0], r[1]) for r in created.results] == [(USER, 0)]  # accepted...
    assert final.sasl_auth_bytes == b"e=unknown-user"  # ...and not kept


def test_tansu_0_6_refuses_a_certificate_with_its_key(
    tmp_path: Path, certificates: Certificates
) -> None:
    both = EmbeddedBroker(
        cert=certificates.server_cert, key=certificates.server_key, log_dir=tmp_path / "both"
    )
    with pytest.raises(BrokerError, match="exited"):
        both.start()
    assert "'--cert <CERT>' cannot be used with '--key <KEY>'" in both.log_path.read_text()
    # A certificate alone is accepted, and ignored: the listener stays plain text.
    with EmbeddedBroker(cert=certificates.server_cert, log_dir=tmp_path / "cert") as plain:
        tls = Settings(brokers=plain.url, security_protocol="SSL", ssl_cafile=certificates.ca)
        with pytest.raises((KafkaError, OSError)):
            run(_metadata_with(tls))


# -- LinkWatch end to end behind SCRAM and TLS ------------------------------------------------

SECURED_RUNS = [
    pytest.param("SASL_PLAINTEXT", "SCRAM-SHA-256", False, id="sasl_plaintext-scram-sha-256"),
    pytest.param("SASL_PLAINTEXT", "SCRAM-SHA-512", False, id="sasl_plaintext-scram-sha-512"),
    pytest.param("SSL", None, True, id="ssl-mutual"),
    pytest.param("SASL_SSL", "SCRAM-SHA-512", False, id="sasl_ssl-scram-sha-512"),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("protocol", "mechanism", "client_certificate"), SECURED_RUNS)
def test_the_worker_runs_secured_end_to_end_and_names_no_user(
    tmp_path: Path,
    certificates: Certificates,
    protocol: str,
    mechanism: str | None,
    client_certificate: bool,
) -> None:
    lines = list(generate(users=200, seed=17, start_ms=START, bad_ratio=0.0))
    expected = {t.trigger_id for t in oracle(lines).triggers if isinstance(t, Trigger)}
    assert expected
    with secured(
        tmp_path, certificates, protocol, mechanism, client_certificate=client_certificate
    ) as (settings, front):
        settings = settings.model_copy(update=FAST)
        run(prepare(settings))
        with WorkerProcess(settings, tmp_path) as worker:
            assert run(produce(settings, lines)) == len(lines)

            def all_fired() -> bool:
                return sum_metric(worker.metrics(), "linkwatch_triggers_total") >= len(expected)

            assert wait_for(all_fired, timeout=180), worker.tail_log()
            metrics = worker.metrics()
            published = trigger_ids(run(read_topic(settings, settings.topic_triggers)))
            assert worker.terminate(timeout=settings.shutdown_timeout + 5) == 0
        assert front.refused == []  # every client of the worker logged in
    assert set(published) == expected
    assert len(published) == len(expected)
    user_id = _user_ids(lines)
    sent = orjson.loads(lines[0])["user_id"]
    assert user_id.search(repr((("user", sent),)))  # the check below would see one
    labelled = [(name, labels) for name, labels in metrics if user_id.search(repr(labels))]
    assert labelled == []
    log = worker.log_path.read_text()
    assert "linkwatch" in log  # the worker did log, and under its own name
    assert user_id.findall(log) == []
    assert PASSWORD not in log


@pytest.mark.timeout(300)
def test_a_wrong_password_or_no_login_is_refused_and_the_log_says_why(
    tmp_path: Path, certificates: Certificates
) -> None:
    with secured(tmp_path, certificates, "SASL_PLAINTEXT", "SCRAM-SHA-256") as (settings, front):
        assert run(_metadata_with(settings)).brokers  # the right password gets in
        wrong = _with(settings, sasl_password="not-" + PASSWORD)
        with pytest.raises(SaslAuthenticationFailed, match="invalid credentials"):
            run(_metadata_with(wrong))
        other_mechanism = _with(settings, sasl_mechanism="SCRAM-SHA-512")
        with pytest.raises(SaslAuthenticationFailed):
            run(_metadata_with(other_mechanism))
        no_login = _with(settings, security_protocol="PLAINTEXT", sasl_mechanism=None)
        with pytest.raises(KafkaConnectionError):
            run(_metadata_with(no_login))

        wrong_log = _refused_start(WorkerProcess(wrong, tmp_path, name="wrong-password"))
        no_login_log = _refused_start(WorkerProcess(no_login, tmp_path, name="no-login"))
        refused = list(front.refused)
    assert "SaslAuthenticationFailed" in wrong_log
    assert "invalid credentials with SASL mechanism SCRAM-SHA-256" in wrong_log
    for log in (wrong_log, no_login_log):
        assert PASSWORD not in log  # neither the right password...
        assert "not-" + PASSWORD not in log  # ...nor the wrong one
    assert "Unable to bootstrap" in no_login_log
    assert any(reason.startswith("request 3 before a login") for reason in refused)


@pytest.mark.timeout(300)
def test_a_client_that_does_not_trust_the_ca_is_refused(
    tmp_path: Path, certificates: Certificates
) -> None:
    with secured(tmp_path, certificates, "SASL_SSL", "SCRAM-SHA-256") as (settings, front):
        assert run(_metadata_with(settings)).brokers
        stranger = _with(settings, ssl_cafile=certificates.stranger_ca)
        with pytest.raises(ssl.SSLCertVerificationError):
            run(_metadata_with(stranger))
        log = _refused_start(WorkerProcess(stranger, tmp_path, name="stranger-ca"))
        assert front.refused == []  # refused by the client, before any login
    assert "CERTIFICATE_VERIFY_FAILED" in log
    assert PASSWORD not in log
