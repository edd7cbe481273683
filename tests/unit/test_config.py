"""fx_workers.config: overrides, error messages that name the key, secrets kept out of sight."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from fx_workers.config import REPO_ROOT, ConfigError, Settings, load_settings

SECRET = "s3cret-Value-42"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A copy of the repository's config.yaml in a folder of its own."""
    path = tmp_path / "conf" / "config.yaml"
    path.parent.mkdir()
    shutil.copy(REPO_ROOT / "config.yaml", path)
    return path


def load(path: Path, **environ: str) -> Settings:
    return load_settings(path, environ=environ)


def test_the_shipped_config_loads_with_its_documented_defaults(config_file: Path) -> None:
    settings = load(config_file)
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.port == 9092
    assert settings.neo4j.port == 7687
    assert settings.redis.port == 6379
    assert settings.graph.account_label == "Account"


def test_env_overrides_use_double_underscores_and_parse_yaml_scalars(config_file: Path) -> None:
    settings = load(
        config_file,
        FX__KAFKA__BOOTSTRAP_SERVERS="broker:29092",
        FX__REDIS__PORT="6380",
        FX__REDIS__PERSISTENCE="true",
        FX__KAFKA__PARTITIONS__REQUESTS="8",
        FX__WORKERS__COUNT="0",
    )
    assert settings.kafka.bootstrap_servers == "broker:29092"
    assert settings.kafka.port == 29092
    assert settings.redis.port == 6380
    assert settings.redis.persistence is True
    assert settings.kafka.partitions.requests == 8
    assert settings.workers.count == 0


def test_variables_without_the_prefix_are_ignored(config_file: Path) -> None:
    settings = load(config_file, FX_REDIS__PORT="1", REDIS__PORT="2", FX_CONFIG="/elsewhere.yaml")
    assert settings.redis.port == 6379


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("FX__REDIS__PORTT", "6380", "redis.portt"),
        ("FX__REDIS__PORT", "not-a-port", "redis.port"),
        ("FX__REDIS__PORT", "70000", "redis.port"),
        ("FX__KAFKA__PARTITIONS__RESULTS", "0", "kafka.partitions.results"),
        ("FX__NOSUCH__KEY", "1", "nosuch"),
    ],
)
def test_a_bad_override_is_named_in_the_error(config_file: Path, variable: str, value: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load(config_file, **{variable: value})


@pytest.mark.parametrize(("uri", "port"), [("bolt://127.0.0.1:7687", 7687), ("bolt+s://db.example:7688", 7688),
                                         ("neo4j://127.0.0.1:7687", 7687), ("neo4j+s://abc.databases.neo4j.io", 7687),
                                         ("neo4j+ssc://[::1]:7690?region=eu", 7690)])
def test_the_neo4j_uri_takes_the_direct_and_the_routing_schemes(config_file: Path, uri: str, port: int) -> None:
    assert load(config_file, FX__NEO4J__URI=uri).neo4j.port == port


@pytest.mark.parametrize(("uri", "says"), [("http://h:7687", "a scheme of bolt, bolt+s"), ("127.0.0.1:7687", "scheme"),
                                           ("neo4j://:7687", "host"), ("bolt://h:70000", "1..65535"),
                                           ("bolt://h:x", "1..65535")])
def test_a_bad_neo4j_uri_is_named_with_what_is_expected(config_file: Path, uri: str, says: str) -> None:
    with pytest.raises(ConfigError, match=rf"neo4j\.uri: .*{re.escape(says)}"):
        load(config_file, FX__NEO4J__URI=uri)


def test_credentials_in_the_neo4j_uri_are_refused_without_being_shown(config_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"neo4j\.uri: .*FX__NEO4J__PASSWORD") as caught:
        load(config_file, FX__NEO4J__URI=f"neo4j://neo4j:{SECRET}@db:7687")
    assert SECRET not in str(caught.value)


def test_a_bad_key_in_the_file_is_named_in_the_error(config_file: Path) -> None:
    config_file.write_text(config_file.read_text().replace("  db: 0", "  db: 0\n  dbb: 1"))
    with pytest.raises(ConfigError, match=r"redis\.dbb"):
        load(config_file)


def test_empty_sections_take_the_defaults_and_accept_overrides(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("neo4j:\nredis:\nstack:\n")
    settings = load(path, FX__REDIS__PORT="6380")
    assert settings.redis.port == 6380
    assert settings.neo4j.password_file == tmp_path / ".stack" / "neo4j" / "password"


def test_a_non_section_is_named_at_the_right_depth(config_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"FX__REDIS__PORT__X: redis\.port is not a section"):
        load(config_file, FX__REDIS__PORT__X="1")


def test_missing_and_malformed_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad)


def test_the_password_never_shows_in_repr_or_errors(config_file: Path) -> None:
    settings = load(config_file, FX__NEO4J__PASSWORD=SECRET)
    assert settings.neo4j.secret() == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert SECRET not in settings.model_dump_json()
    with pytest.raises(ConfigError) as failure:
        load(config_file, FX__NEO4J__PASSWORD=SECRET, FX__NEO4J__USERR="x")
    assert SECRET not in str(failure.value)


def test_a_numeric_looking_password_stays_a_string(config_file: Path) -> None:
    assert load(config_file, FX__NEO4J__PASSWORD="0012").neo4j.secret() == "0012"


def test_the_password_file_is_read_and_relative_to_the_config_file(config_file: Path) -> None:
    settings = load(config_file)
    assert settings.neo4j.password_file == config_file.parent / ".stack" / "neo4j" / "password"
    assert settings.stack.dir == config_file.parent / ".stack"
    with pytest.raises(ConfigError, match="make up"):
        settings.neo4j.secret()
    settings.neo4j.password_file.parent.mkdir(parents=True)
    settings.neo4j.password_file.write_text(SECRET + "\n")
    assert settings.neo4j.secret() == SECRET


@pytest.mark.parametrize("name", ["Account", "TRANSFER", "_private", "account_2"])
def test_plain_identifiers_are_accepted(config_file: Path, name: str) -> None:
    assert load(config_file, FX__GRAPH__ACCOUNT_LABEL=name).graph.account_label == name


@pytest.mark.parametrize("name", ["Account`) DETACH DELETE (n", "2fast", "has space", "a-b", "Acc:Label"])
def test_graph_names_that_are_not_identifiers_are_refused(config_file: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"graph\.transfer_type.*plain identifier"):
        load(config_file, FX__GRAPH__TRANSFER_TYPE=name)


def test_settings_are_frozen(config_file: Path) -> None:
    settings = load(config_file)
    with pytest.raises(ValueError, match="frozen"):
        settings.redis.port = 1  # type: ignore[misc]


def test_the_redis_password_comes_from_the_environment_else_its_file_else_none(config_file: Path) -> None:
    settings = load(config_file)
    assert settings.redis.user == "fx"
    assert settings.redis.password_file == config_file.parent / ".stack" / "redis" / "password"
    assert settings.redis.secret() is None  # a server without auth stays reachable
    settings.redis.password_file.parent.mkdir(parents=True)
    settings.redis.password_file.write_text(SECRET + "\n")
    assert settings.redis.secret() == SECRET
    assert settings.redis.password_source() == str(settings.redis.password_file)
    overridden = load(config_file, FX__REDIS__PASSWORD="0012", FX__REDIS__USER="fx-reader")
    assert (overridden.redis.user, overridden.redis.secret()) == ("fx-reader", "0012")
    assert overridden.redis.password_source() == "FX__REDIS__PASSWORD"
    assert "0012" not in repr(overridden) and SECRET not in repr(settings)
    assert load(config_file, FX__REDIS__USER="").redis.user is None  # authenticate as the default user


def test_the_redis_client_sends_the_user_only_with_a_password(config_file: Path) -> None:
    from fx_workers.store.client import open_redis

    without = open_redis(load(config_file).redis).get_connection_kwargs()
    assert (without.get("username"), without.get("password")) == (None, None)
    with_password = open_redis(load(config_file, FX__REDIS__PASSWORD=SECRET).redis).get_connection_kwargs()
    assert (with_password["username"], with_password["password"]) == ("fx", SECRET)
