"""``fx doctor``'s Kafka checks on stand-in metadata: brokers, replication, replicas in sync, and
workers beyond the request topic's partitions."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest

from fx_workers.config import load_settings
from fx_workers.tools import doctor
from fx_workers.tools.doctor import Replication

if TYPE_CHECKING:
    from fx_workers.config import Settings


def topic(partitions: int, replicas: int = 1, in_sync: int | None = None) -> SimpleNamespace:
    """Metadata of a topic whose every partition has ``replicas`` replicas, the first ``in_sync`` in sync."""
    brokers = list(range(1, replicas + 1))
    return SimpleNamespace(error=None, partitions={
        p: SimpleNamespace(replicas=brokers, isrs=brokers[:replicas if in_sync is None else in_sync])
        for p in range(partitions)})


def cluster(settings: Settings, brokers: int, **topics: SimpleNamespace) -> SimpleNamespace:
    """An admin client whose metadata lists ``brokers`` brokers and the fx topics (by role) given."""
    names = settings.kafka.topics
    metadata = SimpleNamespace(cluster_id="c1", brokers=dict.fromkeys(range(1, brokers + 1)),
                               topics={getattr(names, role): t for role, t in topics.items()})
    return SimpleNamespace(list_topics=lambda timeout: metadata)


def checks(settings: Settings, admin: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> dict[str, doctor.Check]:
    monkeypatch.setattr(doctor, "kafka_admin", lambda kafka: admin)
    return {check.name: check for check in doctor.kafka_checks(settings)}


def three_brokers(**environ: str) -> Settings:
    return load_settings(environ={"FX__STACK__KAFKA_BROKERS": "3",
                                  "FX__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096",
                                  **environ})


def test_replication_is_the_fewest_replicas_and_counts_partitions_out_of_sync() -> None:
    assert Replication.of(topic(4, replicas=3)) == Replication(3, 0)
    assert Replication.of(topic(4, replicas=3, in_sync=2)) == Replication(3, 4)
    assert Replication.of(SimpleNamespace(partitions=dict.fromkeys(range(2)))) == Replication(0, 0)


def test_doctor_reports_brokers_and_every_topic_in_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = three_brokers()
    found = checks(settings, cluster(settings, 3, requests=topic(4, 3), results=topic(4, 3),
                                     dead_letter=topic(1, 3)), monkeypatch)
    assert found["kafka brokers"] == doctor.Check("kafka brokers", True, "3 brokers registered, config says 3")
    assert found["kafka replicas"] == doctor.Check(
        "kafka replicas", True, "replication factor 3 on 3 fx topics, every partition fully in sync")
    assert found["workers"] == doctor.Check("workers", True, "2 workers, 4 partitions of feature-extraction")


def test_doctor_fails_on_a_missing_broker_and_under_replicated_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = three_brokers()
    found = checks(settings, cluster(settings, 2, requests=topic(4, 3, in_sync=2), results=topic(4, 3),
                                     dead_letter=topic(1, 3)), monkeypatch)
    assert not found["kafka brokers"].ok and found["kafka brokers"].detail == "2 brokers registered, config says 3"
    replicas = found["kafka replicas"]
    assert not replicas.ok and "a broker is down" in replicas.fix
    assert replicas.detail == "feature-extraction: 4 under-replicated (fewer replicas in sync than assigned)"


def test_doctor_fails_on_a_topic_with_fewer_replicas_than_brokers(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = three_brokers()
    found = checks(settings, cluster(settings, 3, requests=topic(4, 1), results=topic(4, 3),
                                     dead_letter=topic(1, 3)), monkeypatch)
    low = found["kafka replicas"]
    assert not low.ok
    assert low.detail == "feature-extraction: replication factor 1; config says 3 (stack.kafka_brokers)"
    assert "kafka-reassign-partitions.sh" in low.fix


def test_doctor_warns_of_workers_beyond_the_request_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(environ={"FX__WORKERS__COUNT": "6"})
    found = checks(settings, cluster(settings, 1, requests=topic(4), results=topic(4), dead_letter=topic(1)),
                   monkeypatch)
    workers = found["workers"]
    assert not workers.ok and workers.detail == "6 workers, 4 partitions of feature-extraction: 2 would sit idle"
    assert "kafka.partitions.requests" in workers.fix
