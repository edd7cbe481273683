"""Passwords that any tool accepts: a Neo4j and a Redis Cluster of their own (next to the stack, on
free ports, through the same ``ops`` functions as ``make up``) whose passwords begin
with ``-`` and hold every character the generator gives. Such a password once reached
``neo4j-admin dbms set-initial-password`` as an option (exit 64, "Missing required parameter")."""

from __future__ import annotations

import os
import string
import time
from typing import TYPE_CHECKING

from neo4j import GraphDatabase

from fx_workers.config import load_settings
from fx_workers.store.client import open_redis
from ops.fixtures import free_ports, redis_cluster
from ops.neo4j import neo4j_service
from ops.process import Layout, stop
from ops.redis import reader_password_file
from ops.redis_cluster import redis_cluster_admin, redis_cluster_admin_file, redis_cluster_nodes
from ops.stack import up

if TYPE_CHECKING:
    from pathlib import Path

    from fx_workers.config import Settings

ALPHABET = string.ascii_letters + string.digits + "_-"
"""What ``secrets.token_urlsafe`` (and so the stack's generator) draws from."""


def dash_password(tag: str) -> str:
    """A password beginning with ``-`` (and ``--``, an option's prefix), with every character of the alphabet."""
    return f"--{tag}-{ALPHABET}"


def write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(secret + "\n")


def test_neo4j_starts_with_a_password_that_begins_with_a_dash(tmp_path: Path, settings: Settings) -> None:
    root = tmp_path / "stack"
    root.mkdir()
    (root / "lib").symlink_to(settings.stack.dir / "lib")  # the jars `make setup` fetched
    port = free_ports(1)
    password_file = tmp_path / "neo4j-password"
    write_secret(password_file, dash_password("neo4j"))  # as an fx before the generator's fix made it
    own = load_settings(environ={**os.environ, "FX__STACK__DIR": str(root), "FX__STACK__NEO4J_HEAP": "512m",
                                 "FX__STACK__NEO4J_PAGECACHE": "64m", "FX__NEO4J__URI": f"bolt://127.0.0.1:{port}",
                                 "FX__NEO4J__PASSWORD_FILE": str(password_file)})
    layout = Layout(root)
    neo4j = neo4j_service(own, layout)
    try:
        up(own, layout, [neo4j])  # healthy means it answered with that password
        with GraphDatabase.driver(own.neo4j.uri, auth=(own.neo4j.user, dash_password("neo4j"))) as driver:
            records, _, _ = driver.execute_query("RETURN 1 AS one", database_=own.neo4j.database)
        assert records[0]["one"] == 1
    finally:
        stop(neo4j.name, layout)


def test_a_redis_cluster_replicates_with_passwords_that_begin_with_a_dash(tmp_path: Path) -> None:
    """The cluster admin's password is in each node's config (``masterauth``) and reaches ``redis-cli
    --cluster create`` through ``REDISCLI_AUTH``; the writer's and the reader's are hashed in the ACL file."""
    root = tmp_path / "cluster"
    layout = Layout(root / "stack")
    write_secret(redis_cluster_admin_file(layout), dash_password("admin"))
    write_secret(root / "redis-password", dash_password("writer"))
    write_secret(reader_password_file(load_settings(environ={"FX__STACK__DIR": str(root / "stack")})),
                 dash_password("reader"))
    with redis_cluster(root, replicas=1) as cluster:
        own = load_settings(environ={**os.environ, **cluster.env})
        nodes = redis_cluster_nodes(own)
        for host, port in nodes[len(own.redis.nodes):]:  # the replicas log in to their masters
            deadline = time.monotonic() + 60
            while (info := redis_cluster_admin(layout, host, port).info("replication")).get(
                    "master_link_status") != "up" and time.monotonic() < deadline:
                time.sleep(0.2)
            assert (info["role"], info.get("master_link_status")) == ("slave", "up"), f"{host}:{port}: {info}"
        client = open_redis(own.redis)
        client.set(f"{own.redis.prefix}:secrets-test", "1")
        assert client.get(f"{own.redis.prefix}:secrets-test") in (b"1", "1")
