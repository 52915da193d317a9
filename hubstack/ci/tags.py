"""The tags of hubstack's images and what each kind means.

- ``stable``: what analysts start on (moved by `hubstack ci promote`).
- ``images.tag`` (``latest``): what CI tested last, the "preview".
- commit tags (12 hex digits): what `hubstack ci build --push` built and tested for a commit.
- releases ``X.Y.Z`` (never moved once made) and ``X.Y`` (the newest patch of a line).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

from hubstack.errors import CommandError

_SEMVER = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")
_MINOR = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")


class Version(NamedTuple):
    """MAJOR.MINOR.PATCH, ordered as numbers (1.10.0 is after 1.9.3)."""

    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> Version:
        text = text.removeprefix("v")
        m = _SEMVER.fullmatch(text)
        if not m:
            raise CommandError(
                f"{text[:40]!r} is not a release version: give MAJOR.MINOR.PATCH, such as 1.4.0 "
                "(numbers without leading zeros)"
            )
        return cls(*map(int, m.groups()))

    @classmethod
    def from_tag(cls, tag: str) -> Version | None:
        m = _SEMVER.fullmatch(tag)
        return cls(*map(int, m.groups())) if m else None

    @property
    def minor_tag(self) -> str:
        return f"{self.major}.{self.minor}"

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def is_minor_tag(tag: str) -> bool:
    """X.Y: the moving tag of a release line (its newest patch)."""
    return _MINOR.fullmatch(tag) is not None


_COMMIT_TAG = re.compile(r"[0-9a-f]{12}")


def is_commit_tag(tag: str) -> bool:
    return _COMMIT_TAG.fullmatch(tag) is not None


def is_release_tag(tag: str) -> bool:
    """X.Y.Z or X.Y: tags nothing but `hubstack ci release` may set."""
    return Version.from_tag(tag) is not None or is_minor_tag(tag)


def release_versions(tags: Iterable[str]) -> list[Version]:
    """The X.Y.Z tags among TAGS, oldest first."""
    return sorted(v for v in map(Version.from_tag, tags) if v is not None)
