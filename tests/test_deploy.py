"""The deployment files: Dockerfile, docker-compose.yml, Grafana provisioning, deploy/k8s/.

Each file is parsed and checked against what the worker really reads (Settings, the topics, the
web endpoints) and against the other files it must agree with; third-party checkers validate the
formats: `docker-compose config` for the compose file, the official Kubernetes schemas of
K8S_VERSION (kubernetes-validate, offline) for the manifests. No engine or cluster is needed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from linkwatch.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30"  # the Kubernetes API the manifests are written for (deploy/k8s/README.md)
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - a worker must listen beyond loopback for probes/scrapes
WORKERS = ("linkwatch-1", "linkwatch-2")
COMPOSE_VARIABLES = ("LINKWATCH_PARTITIONS", "SIMULATOR_RATE", "GRAFANA_ADMIN_PASSWORD")


def require_tool(name: str) -> str:
    """The tool's path; without it, skip locally but fail under CI (CI=true)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (`make tools` installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true, so this is an error, not a skip")
        pytest.skip(message)
    return path


def settings_from(env: dict[str, str]) -> Settings:
    """Settings from LINKWATCH_* variables, refusing names the worker does not know (pydantic
    would ignore them, so a typo would silently fall back to a default)."""
    fields = {
        name.removeprefix("LINKWATCH_").lower(): value
        for name, value in env.items()
        if name.startswith("LINKWATCH_")
    }
    unknown = sorted(
        f"LINKWATCH_{name.upper()}" for name in fields if name not in Settings.model_fields
    )
    assert not unknown, f"not LinkWatch settings: {unknown}"
    return Settings(**fields)


# -- Dockerfile --------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per build stage; continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    stages: list[list[tuple[str, str]]] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        if stages:  # instructions before the first FROM (global ARGs) belong to no stage
            stages[-1].append((keyword.upper(), args.strip()))
    return stages


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1]


def args_of(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for key, args in stage if key == keyword]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in args_of(final_stage(), "ENV"):
        for item in shlex.split(args):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def image_uid() -> int:
    (user,) = args_of(final_stage(), "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER {user}: numeric, so runAsNonRoot can verify it"
    assert not gid or gid.isdigit()
    return int(uid)


def test_dockerfile_is_multi_stage_on_slim_python_311() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a build stage and a runtime stage"
    default_args = dict(
        re.findall(r"^ARG (\w+)=(\S+)", (ROOT / "Dockerfile").read_text(), flags=re.M)
    )
    for stage in stages:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: default_args[m[1]], image)
        assert re.fullmatch(r"python:3\.11[.\d]*-slim(-\w+)?", image), image
    build_name = stages[0][0][1].split()[-1]
    assert stages[0][0][1].split()[-2].upper() == "AS"
    copies = args_of(final_stage(), "COPY")
    assert any(args.startswith(f"--from={build_name} /opt/venv") for args in copies), copies


def test_dockerfile_installs_runtime_dependencies_only() -> None:
    (build, *_, runtime) = dockerfile_stages()
    installs = [args for args in args_of(build, "RUN") if "pip install" in args]
    assert any(re.search(r"pip install .*-c constraints\.txt \.(\s|$)", cmd) for cmd in installs)
    assert "[" not in " ".join(installs), "no extras ([dev]) in the image"
    assert not [args for args in args_of(runtime, "RUN") if "pip" in args], "no pip in runtime"
    # RocksDB support comes with the runtime dependencies, and the image uses it by default.
    pyproject = (ROOT / "pyproject.toml").read_text()
    runtime_deps = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert '"rocksdict==' in runtime_deps
    assert image_env()["LINKWATCH_STORE"] == "rocksdb://"


def test_dockerfile_runs_linkwatch_as_a_non_root_user() -> None:
    assert image_uid() != 0
    runtime = final_stage()
    assert [json.loads(args) for args in args_of(runtime, "ENTRYPOINT")] == [["linkwatch"]]
    assert [json.loads(args) for args in args_of(runtime, "CMD")] == [["worker"]]
    assert 'linkwatch = "linkwatch.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_dockerfile_state_directory_is_a_volume_owned_by_the_user() -> None:
    data_dir = image_env()["LINKWATCH_DATA_DIR"]
    volumes = [path for args in args_of(final_stage(), "VOLUME") for path in json.loads(args)]
    assert data_dir in volumes
    # Created with the user as owner, or a fresh named volume would belong to root.
    owner = f"-o {image_uid()}"
    assert any(data_dir in cmd and owner in cmd for cmd in args_of(final_stage(), "RUN"))
    assert settings_from(image_env() | {"LINKWATCH_DATA_DIR": data_dir}).store == "rocksdb://"


class _Healthz(BaseHTTPRequestHandler):
    status = 200  # what /healthz answers; any other path is 404

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


@pytest.fixture
def healthz_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_healthcheck(port: int) -> int:
    """Run the HEALTHCHECK command as Docker would, with the image's `python` on PATH."""
    (args,) = args_of(final_stage(), "HEALTHCHECK")
    _, found, command = args.partition("CMD ")
    assert found, args
    argv = json.loads(command) if command.startswith("[") else ["/bin/sh", "-c", command]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "LINKWATCH_WEB_PORT": str(port)}
    return subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False).returncode


def test_dockerfile_healthcheck_asks_healthz(healthz_server: ThreadingHTTPServer) -> None:
    port = healthz_server.server_address[1]
    assert "/healthz" in args_of(final_stage(), "HEALTHCHECK")[0]
    _Healthz.status = 200
    assert run_healthcheck(port) == 0
    _Healthz.status = 503
    try:
        assert run_healthcheck(port) != 0
    finally:
        _Healthz.status = 200


def test_dockerfile_healthcheck_fails_without_a_server(
    healthz_server: ThreadingHTTPServer,
) -> None:
    free_port = healthz_server.server_address[1]
    healthz_server.shutdown()
    healthz_server.server_close()  # nothing listens on that port any more
    assert run_healthcheck(free_port) != 0


def test_dockerignore_admits_exactly_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: everything is excluded first"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for stage in dockerfile_stages():
        for args in args_of(stage, "COPY"):
            if args.startswith("--from="):
                continue
            *sources, _target = args.split()
            for source in sources:
                assert source.rstrip("/") in admitted, f"COPY {source}: not in .dockerignore"
                assert (ROOT / source).exists(), source
    assert not admitted & {".venv", ".git", "tests", "linkwatch-data"}


# -- docker-compose.yml ------------------------------------------------------------------------


def compose_config(**variables: str) -> dict[str, Any]:
    """`docker-compose config` (validates and resolves the file), parsed; only `variables` set."""
    tool = require_tool("docker-compose")
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}
    env = {k: v for k, v in env.items() if not k.startswith("COMPOSE_")} | variables
    done = subprocess.run(
        [tool, "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"docker-compose config failed:\n{done.stderr}"
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_config()


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: str(value) for name, value in env.items()}


def mounts_of(service: dict[str, Any]) -> dict[str, str]:
    """container path → source (volume name or absolute host path)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        mounts[target] = source
    return mounts


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """host port → container port."""
    return {int(p["published"]): int(p["target"]) for p in service.get("ports", [])}


def healthcheck_disabled(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck", {})
    return bool(check.get("disable")) or check.get("test") == ["NONE"]


def test_compose_validates_with_the_expected_services_and_volumes(
    compose: dict[str, Any],
) -> None:
    services = {"kafka", "topics", *WORKERS, "simulator", "prometheus", "grafana"}
    assert set(compose["services"]) == services
    volumes = {"kafka-data", "prometheus-data", "grafana-data", *(f"{w}-data" for w in WORKERS)}
    assert set(compose["volumes"]) == volumes


def test_compose_kafka_is_apache_kafka_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = env_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not [name for name in env if "ZOOKEEPER" in name]
    assert mounts_of(kafka)[env["KAFKA_LOG_DIRS"]] == "kafka-data"
    assert kafka["healthcheck"]["test"], "the topic creator waits for a healthy broker"
    # Everyone inside the network connects through a listener the broker advertises.
    advertised = {url.split("://")[1] for url in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    simulator = compose["services"]["simulator"]["command"]
    clients = [env_of(compose["services"][w])["LINKWATCH_BROKERS"] for w in WORKERS]
    clients.append(simulator[simulator.index("--brokers") + 1])
    for client in clients:
        assert client.removeprefix("kafka://") in advertised, client


def test_compose_topic_creator_makes_every_topic_alike(compose: dict[str, Any]) -> None:
    services = compose["services"]
    topics = services["topics"]
    assert topics["image"] == services["kafka"]["image"], "kafka-topics.sh of the Kafka image"
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    script = " ".join(topics["command"])
    assert "kafka-topics.sh" in script
    assert "--if-not-exists" in script
    defaults = Settings.model_fields
    expected = {f.default for name, f in defaults.items() if name.startswith("topic_")}
    assert set(re.findall(r"\b(?:events|linkwatch)\.[a-z_]+\b", script)) == expected
    (partitions,) = re.findall(r"--partitions (\d+)", script)
    for name in (*WORKERS, "simulator"):
        assert services[name]["depends_on"]["topics"]["condition"] == (
            "service_completed_successfully"
        )
        assert env_of(services[name])["LINKWATCH_PARTITIONS"] == partitions


def test_compose_partition_count_is_one_variable() -> None:
    services = compose_config(LINKWATCH_PARTITIONS="7")["services"]
    assert "--partitions 7 " in " ".join(services["topics"]["command"])
    for name in (*WORKERS, "simulator"):
        assert env_of(services[name])["LINKWATCH_PARTITIONS"] == "7"


def test_compose_workers_share_a_group_and_keep_rocksdb_state_on_volumes(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    host_ports: set[int] = set()
    app_ids = set()
    for name in WORKERS:
        worker = services[name]
        assert Path(worker["build"]["context"]) == ROOT
        assert worker["command"] == ["worker"]
        assert not healthcheck_disabled(worker), "keeps the image's /healthz check"
        settings = settings_from(env_of(worker))
        app_ids.add(settings.app_id)
        assert settings.store == "rocksdb://"
        assert settings.web_host == ALL_INTERFACES
        assert mounts_of(worker)[str(settings.data_dir)] == f"{name}-data"
        ports = published_ports(worker)
        assert settings.web_port in ports.values()
        host_ports |= ports.keys()
    assert len(app_ids) == 1, "one consumer group"
    assert len(host_ports) == len(WORKERS)


def test_compose_simulator_produces_forever_without_a_healthcheck(
    compose: dict[str, Any],
) -> None:
    simulator = compose["services"]["simulator"]
    assert simulator["image"] == compose["services"][WORKERS[0]]["image"]
    command = simulator["command"]
    assert command[:2] == ["simulate", "--to-kafka"]
    assert "--forever" in command
    assert float(command[command.index("--rate") + 1]) > 0
    assert healthcheck_disabled(simulator), "no web server: the image's check would fail"
    settings_from(env_of(simulator))


def test_compose_prometheus_and_grafana_use_the_repo_files(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config = PurePosixPath(flag.split("=", 1)[1])
    source = Path(mounts_of(prometheus)[str(config.parent)])
    assert source == ROOT / "deploy" / "prometheus"
    # It scrapes every worker, by its compose name, on its web port.
    scraped = yaml.safe_load((source / config.name).read_text())
    targets = {
        target
        for job in scraped["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    for name in WORKERS:
        port = settings_from(env_of(compose["services"][name])).web_port
        assert f"{name}:{port}" in targets
    grafana = mounts_of(compose["services"]["grafana"])
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    assert Path(grafana["/etc/grafana/provisioning"]) == provisioning
    # The dashboard provider reads the directory compose mounts deploy/grafana/dashboards at.
    providers = yaml.safe_load((provisioning / "dashboards" / "linkwatch.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert Path(grafana[provider["options"]["path"]]) == ROOT / "deploy" / "grafana" / "dashboards"


def test_grafana_datasource_is_the_compose_prometheus(compose: dict[str, Any]) -> None:
    path = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    (source,) = yaml.safe_load(path.read_text())["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == "prometheus", "dashboards refer to this uid"
    match = re.fullmatch(r"http://([\w-]+):(\d+)", source["url"])
    assert match, source["url"]
    assert match[1] in compose["services"]
    assert int(match[2]) in published_ports(compose["services"][match[1]]).values()


# -- Kubernetes --------------------------------------------------------------------------------

K8S_FILES = sorted(K8S_DIR.glob("*.yaml"))


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) → object, over every manifest."""
    objects = {}
    for path in K8S_FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in objects, f"{key} defined twice"
                objects[key] = doc
    return objects


def the(kind: str) -> dict[str, Any]:
    (obj,) = [o for (k, _), o in k8s_objects().items() if k == kind]
    return obj


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = the("StatefulSet")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (main,) = pod_spec()["containers"]
    return dict(main)


def container_env() -> dict[str, Any]:
    """Every LINKWATCH_* variable: plain values, ConfigMap values, and secret references."""
    objects = k8s_objects()
    env: dict[str, Any] = {}
    for source in container().get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert ("ConfigMap", name) in objects, f"envFrom: no ConfigMap {name}"
        env |= objects["ConfigMap", name]["data"]
    for item in container()["env"]:
        assert item["name"] not in env, f"{item['name']} set twice"
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def quantity(value: str | int) -> float:
    units = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", str(value))
    assert match, value
    assert match[2] in units, value
    return float(match[1]) * units[match[2]]


def test_k8s_directory_has_the_expected_objects() -> None:
    kinds = sorted(kind for kind, _ in k8s_objects())
    expected = ["ConfigMap", "ConfigMap", "PodDisruptionBudget", "Secret", "Service", "StatefulSet"]
    assert kinds == expected


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_k8s_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs
    for doc in docs:  # strict: an unknown (misspelled) field is an error, not ignored
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_workers_keep_rocksdb_state_on_persistent_volume_claims() -> None:
    settings = settings_from(k8s_settings_env())
    assert settings.store == "rocksdb://"
    (claim,) = the("StatefulSet")["spec"]["volumeClaimTemplates"]
    assert "ReadWriteOnce" in claim["spec"]["accessModes"]
    assert quantity(claim["spec"]["resources"]["requests"]["storage"]) > 0
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    assert mounts[str(settings.data_dir)] == claim["metadata"]["name"]


def k8s_settings_env() -> dict[str, str]:
    """The container's settings, with placeholders for values taken from Secrets."""
    return {k: v if isinstance(v, str) else "from-secret" for k, v in container_env().items()}


def test_k8s_probes_ask_healthz_and_readyz_on_the_web_port() -> None:
    settings = settings_from(k8s_settings_env())
    assert settings.web_host == ALL_INTERFACES, "the kubelet probes the pod IP, not loopback"
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        get = container()[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == settings.web_port


def test_k8s_container_has_resource_requests_and_limits() -> None:
    resources = container()["resources"]
    for kind in ("cpu", "memory"):
        request, limit = resources["requests"][kind], resources["limits"][kind]
        assert 0 < quantity(request) <= quantity(limit), (kind, request, limit)


def test_k8s_service_and_budget_select_the_workers() -> None:
    statefulset, service, budget = the("StatefulSet"), the("Service"), the("PodDisruptionBudget")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    for selector in (
        statefulset["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"],
        budget["spec"]["selector"]["matchLabels"],
    ):
        assert selector
        assert selector.items() <= labels.items()
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None", "headless: governs the pods' names"
    # A drain may take a worker, never all of them.
    replicas = statefulset["spec"]["replicas"]
    unavailable = budget["spec"].get(
        "maxUnavailable", replicas - budget["spec"].get("minAvailable", 0)
    )
    assert 0 < unavailable < replicas


def test_k8s_sasl_credentials_come_from_the_secret() -> None:
    objects = k8s_objects()
    env = container_env()
    settings = settings_from(k8s_settings_env())
    assert settings.security_protocol.startswith("SASL_")
    assert settings.sasl_mechanism
    for name in ("LINKWATCH_SASL_USERNAME", "LINKWATCH_SASL_PASSWORD"):
        ref = env[name]["secretKeyRef"]
        secret = objects["Secret", ref["name"]]
        assert ref["key"] in {**secret.get("data", {}), **secret.get("stringData", {})}


def test_k8s_journeys_come_from_the_configmap_as_a_directory() -> None:
    journeys = PurePosixPath(container_env()["LINKWATCH_JOURNEYS_FILE"])
    mount = next(m for m in container()["volumeMounts"] if m["mountPath"] == str(journeys.parent))
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates (no reload)"
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == mount["name"])
    configmap = k8s_objects()["ConfigMap", volume["configMap"]["name"]]
    assert journeys.name in configmap["data"]


def test_k8s_journeys_configmap_is_the_shipped_journeys_file() -> None:
    shipped = (ROOT / "src" / "linkwatch" / "journeys.toml").read_text()
    data = k8s_objects()["ConfigMap", "linkwatch-journeys"]["data"]["journeys.toml"]
    assert data == shipped, (
        "deploy/k8s/configmap-journeys.yaml differs from src/linkwatch/journeys.toml: "
        "copy it again with the command at the top of the ConfigMap file"
    )


def test_k8s_pods_run_as_the_image_user_and_outlast_the_shutdown_timeout() -> None:
    security = pod_spec()["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == image_uid()
    assert security["fsGroup"] == image_uid(), "the state volume must be writable by the user"
    assert container()["args"] == ["worker"]
    settings = settings_from(k8s_settings_env())
    assert pod_spec()["terminationGracePeriodSeconds"] > settings.shutdown_timeout
