"""Generated secrets: passwords that any tool accepts, kept in files of mode 0600."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from ops.process import show

if TYPE_CHECKING:
    from pathlib import Path

PASSWORD_BYTES = 24
"""A generated password's random bytes: 32 characters of :func:`generate_secret`."""


def generate_secret(nbytes: int) -> str:
    """``secrets.token_urlsafe(nbytes)`` (letters, digits, ``_`` and ``-``), drawn again while it begins
    with ``-``: one draw in 64 does, and a tool that takes it as an argument reads it as an option
    (``neo4j-admin dbms set-initial-password`` exited 64, "Missing required parameter")."""
    secret = secrets.token_urlsafe(nbytes)
    while secret.startswith("-"):
        secret = secrets.token_urlsafe(nbytes)
    return secret


def private_file(path: Path) -> Path:
    """``path`` created empty with mode 0600 (its folder too), before a secret is written to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    return path


def secret_file(path: Path, content: str, min_length: int = 0) -> str:
    """Read ``path``, creating it (mode 0600) with ``content`` the first time, or when what it holds is
    shorter than ``min_length`` (a secret generated before the minimum was raised)."""
    if not path.exists() or len(path.read_bytes().strip()) < min_length:
        private_file(path).write_text(content)
    return path.read_text()


def write_password(path: Path, password: str, what: str) -> str:
    """Write ``password`` to ``path`` (mode 600, created so before anything is written)."""
    private_file(path).write_text(password + "\n")
    print(f"{what}: generated into {show(path)}")
    return password


def generate_password(path: Path, what: str) -> str:
    """A new random password (:func:`generate_secret`) written to ``path``."""
    return write_password(path, generate_secret(PASSWORD_BYTES), what)


def stored_password(path: Path, what: str) -> str:
    """The password in ``path``, generated the first time."""
    if path.exists():
        return path.read_text().strip()
    return generate_password(path, what)
