"""What the spawn form and the home page say about versions (hubstack.hub.versions), from
release records as `hubstack ci release` writes them and the last promotion."""

from __future__ import annotations

import pytest

from hubstack.ci.promote import record_promotion, releases_dir
from hubstack.ci.release import Release, load_release, retire
from hubstack.config import PlatformConfig
from hubstack.errors import CommandError
from hubstack.hub import versions


def record(cfg, version: str, numpy: str, date: str, less: bool = True) -> None:
    dpkg = {"less": ["less", "590-2"]} if less else {}
    Release(
        version=version,
        source="latest",
        released=f"{date}T10:00:00+00:00",
        digests={"notebook": "sha256:" + version.replace(".", "") * 8},
        previous=None,
        packages={"notebook": {"pip": {"numpy": ["numpy", numpy]}, "dpkg": dpkg}},
    ).write(releases_dir(cfg))


@pytest.fixture
def cfg(tmp_path):
    cfg = PlatformConfig(state_dir=tmp_path)
    record(cfg, "1.0.0", "2.3.4", "2026-10-01")
    record(cfg, "1.1.0", "2.3.5", "2026-11-01", less=False)
    record(cfg, "1.2.0", "2.3.5", "2026-12-01")
    record_promotion(cfg, "1.1.0")
    return cfg


def test_form_offers_stable_preview_and_releases_with_date_and_differences(cfg):
    offers = versions.version_offers(cfg, "notebook", may_preview=True)
    assert [o.value for o in offers] == ["stable", "preview", "1.2.0", "1.1.0", "1.0.0"]
    by = {o.value: o for o in offers}
    assert by["1.0.0"].label == "1.0.0 (released 2026-10-01)"
    assert by["1.0.0"].detail.startswith("2 package(s) differ from stable: numpy 2.3.5 -> 2.3.4")
    assert "less (none) -> 590-2" in by["1.0.0"].detail
    assert by["1.1.0"].detail == "this is stable"
    assert [o.value for o in versions.version_offers(cfg, "notebook", False)][:2] == [
        "stable",
        "1.2.0",
    ]
    html = versions.form_rows(offers, "1.0.0")
    assert 'value="1.0.0" checked' in html and 'value="stable" checked' not in html


def test_retired_and_surplus_releases_are_not_offered(cfg):
    retire(cfg, "1.2.0")
    assert load_release(cfg, "1.2.0").retired
    cfg = cfg.model_copy(update={"hub": cfg.hub.model_copy(update={"releases_offered": 1})})
    assert [r.version for r in versions.offered_releases(cfg)] == ["1.1.0"]
    with pytest.raises(CommandError, match="no release 9.9.9"):
        retire(cfg, "9.9.9")


def test_home_notice_for_a_kept_release_older_than_stable_or_retired(cfg):
    assert "older than stable (1.1.0)" in versions.version_notice(cfg, "1.0.0")
    assert versions.version_notice(cfg, "1.2.0") == ""
    assert versions.version_notice(cfg, "") == "" and versions.version_notice(cfg, None) == ""
    retire(cfg, "1.2.0")
    assert "no longer offered" in versions.version_notice(cfg, "1.2.0")


def test_without_a_promoted_release_packages_are_not_compared(tmp_path):
    cfg = PlatformConfig(state_dir=tmp_path)
    record(cfg, "1.0.0", "2.3.4", "2026-10-01")
    (offer,) = [o for o in versions.version_offers(cfg, "notebook", False) if o.value == "1.0.0"]
    assert offer.detail == "stable is not a release, so packages are not compared"
