"""A worker on another host: fx installed from its wheel outside the checkout and started with only a
``config.yaml`` and ``FX__*`` variables (the three endpoints and the passwords), no ``.stack`` file
within reach, computes a whole ``fx_extract`` run (``airflow dags test`` on this host) that equals the
local reference."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fx_workers.config import CONFIG_ENV, ENV_PREFIX, REPO_ROOT
from tests.integration.pipeline_env import dags_test, migrated_airflow

if TYPE_CHECKING:
    from collections.abc import Iterator

    import redis

    from ops.fixtures import Slice

pytestmark = pytest.mark.integration  # it needs the local stack
WORKER_ID = "remote-0"
BATCH_SIZE = 150


def build_wheel(folder: Path) -> Path:
    """fx's wheel, built from a copy of its sources (the build leaves nothing in the checkout)."""
    source = folder / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "fx_workers", source / "fx_workers", ignore=shutil.ignore_patterns("__pycache__"))
    uv = Path(sys.executable).parent / "uv"
    subprocess.run((uv, "build", "--wheel", "--out-dir", folder / "dist", source), check=True, capture_output=True,
                   timeout=300)
    (wheel,) = (folder / "dist").glob("fx-*.whl")
    return wheel


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The other host's folder: fx under ``site/`` (from the wheel; its dependencies are this venv's), and
    the working directory ``run/`` holding a copy of config.yaml, whose password files do not exist."""
    folder = tmp_path_factory.mktemp("remote-host")
    subprocess.run((sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    folder / "site", build_wheel(folder)), check=True, capture_output=True, timeout=300)
    (folder / "run").mkdir()
    shutil.copy(REPO_ROOT / "config.yaml", folder / "run" / "config.yaml")
    return folder


def host_env(piece: Slice, host: Path) -> dict[str, str]:
    """What the other host is given: the slice's ``FX__`` overrides, the endpoints and the passwords; no
    ``FX_CONFIG`` (config.yaml is found in the working directory), nothing else of this machine's."""
    config = piece.settings
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(host),
        "PYTHONPATH": str(host / "site"),
        **{name: value for name, value in piece.env.items() if name.startswith(ENV_PREFIX)},
        "FX__KAFKA__BOOTSTRAP_SERVERS": config.kafka.bootstrap_servers,
        "FX__NEO4J__URI": config.neo4j.uri,
        "FX__NEO4J__PASSWORD": config.neo4j.secret(),
        "FX__REDIS__HOST": config.redis.host,
        "FX__REDIS__PORT": str(config.redis.port),
        "FX__REDIS__PASSWORD": config.redis.secret() or "",
    }


def on_host(piece: Slice, host: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run((sys.executable, *args), env=host_env(piece, host), cwd=host / "run", capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def remote_worker(piece: Slice, host: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m fx_workers`` on the other host, the only worker of the slice's consumer group."""
    with (host / "worker.log").open("ab") as log:
        proc = subprocess.Popen((sys.executable, "-m", "fx_workers", "--worker-id", WORKER_ID),
                                env=host_env(piece, host), cwd=host / "run", stdout=log, stderr=subprocess.STDOUT)
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, (host / "worker.log").read_text()[-3000:]


def test_the_other_host_has_fx_from_the_wheel_and_no_stack_files(piece: Slice, host: Path) -> None:
    probe = on_host(piece, host, "-c", "import fx_workers.config as c; print(c.__file__); print(c.config_path()); "
                                      "s = c.settings(); print(s.neo4j.password_file); print(s.redis.password_file)")
    assert probe.returncode == 0, probe.stderr
    module, config, *password_files = probe.stdout.split()
    assert Path(module).is_relative_to(host / "site"), module
    assert Path(config) == host / "run" / "config.yaml"
    assert CONFIG_ENV not in host_env(piece, host)
    for path in map(Path, password_files):
        assert not path.exists() and path.is_relative_to(host), path  # so the passwords came from FX__ variables
    assert not any((parent / ".stack").exists() for parent in (host / "run").parents), "a .stack dir is reachable"


def test_a_worker_started_elsewhere_computes_a_whole_run(piece: Slice, host: Path, redis_client: redis.Redis,
                                                         remote_worker: subprocess.Popen[bytes],
                                                         tmp_path: Path) -> None:
    expected = piece.local_snapshot(redis_client)
    env = migrated_airflow(piece, tmp_path / "airflow")
    output, _ = dags_test(env, batch_size=BATCH_SIZE).communicate(timeout=600)

    assert remote_worker.poll() is None, (host / "worker.log").read_text()[-3000:]
    assert "progress run=" in output, output[-5000:]
    assert piece.snapshot(redis_client) == expected
    log = (host / "worker.log").read_text()
    registry = piece.registry(redis_client)
    batches = int(registry.manifest(registry.latest())["batches"])
    assert batches > 1 and log.count("batch done") == batches, log[-3000:]
    health = on_host(piece, host, "-m", "fx_workers", "--check", "--worker-id", WORKER_ID)
    assert health.returncode == 0, health.stdout + health.stderr
