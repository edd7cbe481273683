"""``redis.mode`` and ``redis.nodes``: parsed from the file or a comma list in the environment, and
refused with the key named when they cannot work; what ``make up`` makes of them (no server started)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from fx_workers.config import ConfigError, load_settings
from ops.airflow import airflow_env
from ops.process import Layout, StackError
from ops.redis import redis_acl
from ops.redis_cluster import REDIS_CLUSTER_ADMIN, redis_cluster_admin_file, redis_cluster_nodes, redis_cluster_services
from ops.stack import env_exports, services

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from fx_workers.config import Settings


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("redis:\n  mode: cluster\n  nodes: [10.0.0.1:7000, 10.0.0.2:7000]\n")
    return path


def test_nodes_from_the_file_and_from_a_comma_list(config_file: Path) -> None:
    redis = load_settings(config_file, {}).redis
    assert (redis.mode, redis.addresses()) == ("cluster", [("10.0.0.1", 7000), ("10.0.0.2", 7000)])
    redis = load_settings(config_file, {"FX__REDIS__NODES": "a:7001, b:7002,"}).redis
    assert redis.nodes == ("a:7001", "b:7002")
    assert redis.endpoint() == "cluster a:7001,b:7002"


def test_standalone_is_the_default(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("redis:\n")
    redis = load_settings(path, {}).redis
    assert (redis.mode, redis.endpoint()) == ("standalone", "127.0.0.1:6379")


@pytest.mark.parametrize(("env", "message"), [
    ({"FX__REDIS__MODE": "clustered"}, r"redis\.mode: Input should be 'standalone' or 'cluster'"),
    ({"FX__REDIS__NODES": ""}, r"redis: .*mode cluster needs at least one seed node in redis\.nodes"),
    ({"FX__REDIS__NODES": "a:7000,b"}, r"redis\.nodes: .*host:port .* Got 'b'"),
    ({"FX__REDIS__NODES": "a:70000"}, r"redis\.nodes: .*1\.\.65535\. Got 'a:70000'"),
    ({"FX__REDIS__NODES": "a:1,a:1"}, r"redis\.nodes: .*listed twice"),
    ({"FX__REDIS__DB": "3"}, r"redis: .*only database 0.* Got redis\.db 3"),
])
def test_bad_cluster_settings_name_the_key(config_file: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(config_file, env)


def test_cluster_users_may_discover_the_slots_and_standalone_users_stay_as_they_were(config_file: Path) -> None:
    cluster = load_settings(config_file, {}).redis
    standalone = load_settings(config_file, {"FX__REDIS__MODE": "standalone"}).redis
    for user, rules in redis_acl(cluster).items():
        if user != "default":
            assert rules.endswith("+cluster|slots +cluster|shards +cluster|info +command +readonly +asking"), user
            assert rules.startswith(redis_acl(standalone)[user])
    assert not any("cluster" in rules for rules in redis_acl(standalone).values())


@pytest.fixture
def cluster_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(nodes: str = "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002", replicas: int = 0) -> Settings:
        path = tmp_path / "config.yaml"
        path.write_text("redis:\n  mode: cluster\n")
        return load_settings(path, {"FX__REDIS__NODES": nodes, "FX__STACK__REDIS_REPLICAS": str(replicas),
                                    "FX__REDIS__USER": "fx", "FX__REDIS__PASSWORD": "writer-secret",
                                    "FX__WORKERS__COUNT": "1"})
    return make


def test_the_stack_runs_replicas_on_the_ports_after_the_masters(cluster_settings: Callable[..., Settings]) -> None:
    assert [port for _, port in redis_cluster_nodes(cluster_settings(replicas=1))] == [
        7000, 7001, 7002, 7003, 7004, 7005]
    with pytest.raises(StackError, match=r"at least 3 masters in redis\.nodes"):
        redis_cluster_nodes(cluster_settings("127.0.0.1:7000,127.0.0.1:7001"))
    with pytest.raises(StackError, match="loopback"):
        redis_cluster_nodes(cluster_settings("10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000"))


def test_cluster_nodes_keep_passwords_off_the_command_line(cluster_settings: Callable[..., Settings]) -> None:
    settings = cluster_settings()
    layout = Layout(settings.stack.dir)
    nodes = redis_cluster_services(settings, layout)
    assert [node.name for node in nodes] == ["redis-7000", "redis-7001", "redis-7002"]
    assert nodes[-1].needs == ("redis-7000", "redis-7001") and nodes[-1].ready is not None
    nodes[0].prepare()
    conf = settings.stack.dir / "redis-cluster" / "7000" / "redis.conf"
    admin = redis_cluster_admin_file(layout).read_text().strip()
    assert nodes[0].command == ("redis-server", str(conf)) and nodes[0].ports == (7000, 17000)
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    text = conf.read_text()
    assert "cluster-enabled yes" in text and f"masteruser {REDIS_CLUSTER_ADMIN}\nmasterauth {admin}" in text
    acl = (settings.stack.dir / "redis-cluster" / "users.acl").read_text()
    assert admin not in acl and "writer-secret" not in acl
    assert f"user {REDIS_CLUSTER_ADMIN} reset on resetchannels -@all +cluster +psync " in acl

    workers = [s for s in services(settings, layout) if s.name.startswith("worker-")]
    assert workers[0].needs[-3:] == ("redis-7000", "redis-7001", "redis-7002") and "redis" not in workers[0].needs


def test_airflow_reaches_the_cluster_through_fx_redis(cluster_settings: Callable[..., Settings]) -> None:
    connection = json.loads(airflow_env(cluster_settings())["AIRFLOW_CONN_FX_REDIS"])
    assert (connection["host"], connection["port"], connection["login"]) == ("127.0.0.1", 7000, "fx")
    assert connection["extra"] == {"cluster": True,
                                   "startup_nodes": "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"}


def test_the_stack_env_names_the_cluster(cluster_settings: Callable[..., Settings]) -> None:
    """``source .stack/env`` in a new shell reaches the cluster ``make up`` started from the environment."""
    exported = env_exports(cluster_settings())
    assert (exported["FX__REDIS__MODE"], exported["FX__REDIS__NODES"]) == (
        "cluster", "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002")
