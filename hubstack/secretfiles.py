"""Secret files: created with mode 0600 in a 0700 folder, written atomically, generated once,
never printed. Registry credentials, the hub's cookie secret and proxy token, the webhook
secret all live in such files under STATE_DIR/secrets."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Write a secret file atomically with mode 0600 (created so, never widened)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def generated_secret(path: Path) -> str:
    """The random secret in PATH, generated there on first use (64 hex characters)."""
    path = Path(path)
    if not path.exists():
        write_private(path, secrets.token_hex(32) + "\n")
    return path.read_text().strip()
