"""Release versions and which tags retention may remove (hubstack.ci.tags, .retention)."""

from __future__ import annotations

import pytest

from hubstack.ci.retention import prunable_tag, release_keeper
from hubstack.ci.tags import Version, is_release_tag, release_versions
from hubstack.config import PlatformConfig
from hubstack.errors import CommandError


def test_versions_order_as_numbers_and_accept_a_v():
    assert Version.parse("v1.10.0") > Version.parse("1.9.3")
    assert str(Version.parse("2.0.11")) == "2.0.11" and Version.parse("2.0.11").minor_tag == "2.0"
    assert release_versions(["latest", "1.10.0", "1.2", "1.9.3", "0123456789ab"]) == [
        Version(1, 9, 3),
        Version(1, 10, 0),
    ]


@pytest.mark.parametrize("bad", ["1.2", "01.2.3", "1.2.3-rc1", "latest", "1.2.3.4", "", "v"])
def test_a_version_is_major_minor_patch(bad):
    with pytest.raises(CommandError, match="MAJOR.MINOR.PATCH"):
        Version.parse(bad)


def test_retention_removes_only_the_tags_the_release_flow_makes():
    assert all(map(prunable_tag, ["1.2.3", "1.2", "0123456789ab"]))
    assert not any(map(prunable_tag, ["stable", "latest", "alice-3f2a", "0123456789"]))
    assert is_release_tag("1.2") and not is_release_tag("stable")


def test_keeper_keeps_stable_latest_and_the_newest_releases():
    keep = release_keeper(PlatformConfig(), ["1.0.0", "1.10.0", "1.9.0", "1.9"], 2)
    assert [t for t in ["stable", "latest", "1.0.0", "1.9.0", "1.10.0", "1.9"] if keep(t)] == [
        "stable",
        "latest",
        "1.9.0",
        "1.10.0",
    ]
