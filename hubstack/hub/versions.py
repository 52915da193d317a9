"""Which versions an analyst may start, as the spawn form and the home page show them.

`stable` (the default), `preview` (images.tag, for those ``hub.preview`` names) and the
newest ``hub.releases_offered`` releases that are not retired, read from the release records
(`hubstack ci release`, STATE_DIR/releases, mounted read-only into the hub). Each release is
shown with its date and the packages of the profile's image that differ from stable's,
compared through the locks the records carry; nothing is pulled to draw the form.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from hubstack.ci.promote import stable_tag
from hubstack.ci.release import Release, load_release, load_releases
from hubstack.ci.tags import Version
from hubstack.config import PlatformConfig
from hubstack.images.lockdiff import LOCK_FILES, PackageChange, diff_packages

STABLE, PREVIEW = "stable", "preview"
SHOWN_CHANGES = 4


def is_release(version: str | None) -> bool:
    return version is not None and Version.from_tag(version) is not None


def offered_releases(cfg: PlatformConfig) -> list[Release]:
    """The newest hub.releases_offered releases not retired, newest first."""
    if cfg.hub.releases_offered == 0:
        return []
    return [r for r in load_releases(cfg) if not r.retired][: cfg.hub.releases_offered]


def stable_release(cfg: PlatformConfig) -> Release | None:
    """The release `stable` was last promoted to; None when it is a commit or the first build."""
    tag = stable_tag(cfg)
    return load_release(cfg, tag) if tag is not None and is_release(tag) else None


def package_changes(stable: Release, release: Release, image: str) -> list[PackageChange] | None:
    """IMAGE's package differences from STABLE to RELEASE; None when a lock is not recorded."""
    old, new = stable.lock_packages(image), release.lock_packages(image)
    if old is None or new is None:
        return None
    return [c for m in LOCK_FILES for c in diff_packages(m, old.get(m, {}), new.get(m, {}))]


def describe_against_stable(stable: Release | None, release: Release, image: str) -> str:
    """One line for the form: how RELEASE's IMAGE differs from STABLE's packages."""
    if stable is None:
        return "stable is not a release, so packages are not compared"
    if stable.version == release.version:
        return "this is stable"
    changes = package_changes(stable, release, image)
    if changes is None:
        return f"packages of {image} not recorded"
    if not changes:
        return "the same packages as stable"
    shown = ", ".join(
        f"{c.name} {c.old or '(none)'} -> {c.new or '(none)'}" for c in changes[:SHOWN_CHANGES]
    )
    more = f" and {len(changes) - SHOWN_CHANGES} more" if len(changes) > SHOWN_CHANGES else ""
    return f"{len(changes)} package(s) differ from stable: {shown}{more}"


@dataclass(frozen=True)
class VersionOffer:
    value: str
    label: str
    detail: str


def version_offers(cfg: PlatformConfig, image: str, may_preview: bool) -> list[VersionOffer]:
    offers = [VersionOffer(STABLE, STABLE, "the promoted, tested images (the default)")]
    if may_preview:
        offers.append(VersionOffer(PREVIEW, PREVIEW, "the newest tested build, not yet promoted"))
    stable = stable_release(cfg)  # read once per form, not once per release
    for r in offered_releases(cfg):
        offers.append(
            VersionOffer(
                r.version,
                f"{r.version} (released {r.released[:10]})",
                describe_against_stable(stable, r, image),
            )
        )
    return offers


def version_notice(cfg: PlatformConfig, chosen: str | None) -> str:
    """For the home page: '' unless the analyst's kept release is retired or older than stable."""
    if not is_release(chosen):
        return ""
    rec = load_release(cfg, str(chosen))
    if rec is None or rec.retired:
        return (
            f"Release {chosen}, which you chose, is no longer offered: your next start is on "
            "stable."
        )
    stable = stable_release(cfg)
    if stable is not None and Version.parse(rec.version) < Version.parse(stable.version):
        return (
            f"Your server starts on release {rec.version} (released {rec.released[:10]}), older "
            f"than stable ({stable.version}). Choose stable on the start page to move to it."
        )
    return ""


def form_rows(offers: list[VersionOffer], chosen: str) -> str:
    """The spawn form's version radios, CHOSEN checked (stable when it is not offered)."""
    if chosen not in {o.value for o in offers}:
        chosen = STABLE
    rows = ["<fieldset><legend>Version</legend>"]
    for o in offers:
        checked = " checked" if o.value == chosen else ""
        rows.append(
            f'<label class="form-check"><input class="form-check-input" type="radio" '
            f'name="version" value="{html.escape(o.value)}"{checked}> '
            f"<strong>{html.escape(o.label)}</strong> <small>{html.escape(o.detail)}</small>"
            "</label>"
        )
    rows.append("</fieldset>")
    return "\n".join(rows)
