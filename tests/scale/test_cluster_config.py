"""``redis.mode`` and ``redis.nodes``: parsed from the file or a comma list in the environment, and
refused with the key named when they cannot work."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from fx_workers.config import ConfigError, load_settings
from fx_workers.tools.stack import redis_acl

if TYPE_CHECKING:
    from pathlib import Path


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
