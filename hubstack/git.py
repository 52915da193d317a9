"""git, run one way for all of hubstack: change detection (ci.plan), image labels
(images.build) and the webhook builder's checkout (ci.webhook)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from hubstack.errors import CommandError


class GitError(CommandError):
    """A git command failed; the message names the command, the folder and git's own words."""


def _run(root: Path | str, args: tuple[str, ...]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise GitError("git is not installed; change detection and image labels need it") from None


def git(root: Path | str, *args: str) -> str:
    """Run git in ROOT and return its stdout; a failure is a GitError naming the command."""
    proc = _run(root, args)
    if proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip()
        raise GitError(f"git {' '.join(args)} failed in {root}: {detail}")
    return proc.stdout


def git_succeeds(root: Path | str, *args: str) -> bool:
    """Whether git ARGS exits 0 in ROOT (for questions such as "is this a commit?")."""
    return _run(root, args).returncode == 0


def git_output_or_empty(root: Path | str, *args: str) -> str:
    """git's stripped stdout, or "" when git fails or is absent: for facts that are nice to
    have (an image label's revision) where a plain folder without git must still work."""
    try:
        proc = _run(root, args)
    except GitError:
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def is_commit(root: Path | str, ref: str) -> bool:
    return git_succeeds(root, "cat-file", "-e", f"{ref}^{{commit}}")
