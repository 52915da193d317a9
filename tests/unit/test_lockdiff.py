"""Package locks: parsing, differences, and where they show (env report, CI report, labels)."""

from __future__ import annotations

from hubstack.ci.rebuild import BuildReport, ImageOutcome
from hubstack.config import parse_config
from hubstack.envreport import Entry, Target, compare, format_entry, render_html
from hubstack.images.build import image_labels
from hubstack.images.graph import ImageGraph
from hubstack.images.lockdiff import (
    ImageLock,
    PackageChange,
    diff_locks,
    diff_packages,
    format_changes,
    parse_dpkg,
    parse_pip,
)

PIP_OLD = """\
# Editable install with no version control (mypkg==0.1)
-e /src/mypkg
numpy==2.1.0
pandas==2.2.2
PyYAML==6.0.1
foo==1.0
"""
PIP_NEW = """\
-e /src/mypkg
numpy==2.1.0
pandas==2.2.3
pyyaml==6.0.1
local-tool @ file:///wheels/local_tool-1.0-py3-none-any.whl
"""
DPKG_OLD = "bash=5.2.15-2+b7\nlibc6=2.36-9+deb12u8\n"
DPKG_NEW = "bash=5.2.15-2+b7\ncurl=7.88.1-10+deb12u8\nlibc6=2.36-9+deb12u9\n"


def lock(pip: str, dpkg: str, image_id: str = "sha256:1") -> ImageLock:
    return ImageLock(
        ref=image_id,
        image_id=image_id,
        name="notebook",
        packages={"pip": parse_pip(pip), "dpkg": parse_dpkg(dpkg)},
    )


def test_parse_pip_reads_every_freeze_form():
    packages = parse_pip(PIP_OLD + PIP_NEW)
    assert packages["pandas"] == ("pandas", "2.2.3")
    assert packages["local-tool"] == (
        "local-tool",
        "file:///wheels/local_tool-1.0-py3-none-any.whl",
    )
    assert packages["/src/mypkg"] == ("/src/mypkg", "/src/mypkg")
    assert not any(key.startswith("#") for key in packages)
    # PEP 503: PyYAML and pyyaml are one package.
    assert packages["pyyaml"] == ("pyyaml", "6.0.1")
    assert parse_pip("") == {}


def test_parse_dpkg_reads_name_equals_version():
    assert parse_dpkg(DPKG_NEW + "\nnot a line\n") == {
        "bash": ("bash", "5.2.15-2+b7"),
        "curl": ("curl", "7.88.1-10+deb12u8"),
        "libc6": ("libc6", "2.36-9+deb12u9"),
    }


def test_diff_lists_added_removed_and_changed_per_manager():
    changes = diff_locks(lock(PIP_OLD, DPKG_OLD), lock(PIP_NEW, DPKG_NEW, "sha256:2"))
    assert changes == [
        PackageChange("pip", "foo", "1.0", None),
        PackageChange("pip", "local-tool", None, "file:///wheels/local_tool-1.0-py3-none-any.whl"),
        PackageChange("pip", "pandas", "2.2.2", "2.2.3"),
        PackageChange("dpkg", "curl", None, "7.88.1-10+deb12u8"),
        PackageChange("dpkg", "libc6", "2.36-9+deb12u8", "2.36-9+deb12u9"),
    ]
    assert [c.kind for c in changes] == ["removed", "added", "changed", "added", "changed"]
    assert format_changes(changes) == [
        "pip  - foo 1.0",
        "pip  + local-tool file:///wheels/local_tool-1.0-py3-none-any.whl",
        "pip    pandas 2.2.2 -> 2.2.3",
        "dpkg + curl 7.88.1-10+deb12u8",
        "dpkg   libc6 2.36-9+deb12u8 -> 2.36-9+deb12u9",
    ]


def test_no_difference_says_so():
    same = parse_pip(PIP_NEW)
    assert diff_packages("pip", same, dict(same)) == []
    assert format_changes([]) == ["no package differences"]


def test_every_image_labels_its_own_lineage_entry(tmp_path):
    (tmp_path / "images" / "base").mkdir(parents=True)
    (tmp_path / "images" / "base" / "Dockerfile").write_text("FROM debian:bookworm-slim\n")
    cfg = parse_config({"source_dir": str(tmp_path), "base": {"extra_ca_bundle": "none"}})
    ctx = ImageGraph.from_config(cfg)["base"]
    labels = image_labels(cfg, ctx, tmp_path, "ab" * 32)
    assert labels["io.hubstack.lineage.base"] == "ab" * 32
    assert labels["io.hubstack.context-digest"] == "ab" * 32
    assert labels["io.hubstack.image"] == "base"


# --- env report: how a container is judged ----------------------------------------------
CFG = parse_config({"base": {"extra_ca_bundle": "none"}})
REPO = CFG.image_repository("notebook")


class FakeResolver:
    def __init__(self, targets: dict, locks: dict):
        self.targets, self.locks = targets, locks

    def get(self, name, tag):
        return self.targets.get((name, tag))

    def lock(self, image_id):
        return self.locks[image_id]


def entry(image_id: str = "sha256:old", kind: str = "notebook", digests=()) -> Entry:
    return Entry(
        analyst="alice" if kind == "notebook" else "shared",
        kind=kind,
        profile="default" if kind == "notebook" else None,
        container="nb-alice",
        image_ref=f"{REPO}:latest",
        image_id=image_id,
        repo_digests=list(digests),
        image_name="notebook",
        digest=None,
        lineage={"base": "1" * 64, "notebook": "2" * 64},
    )


def test_outdated_container_shows_its_package_differences_from_stable():
    stable = Target(f"{REPO}:stable", "sha256:new", None)
    resolver = FakeResolver(
        {("notebook", "stable"): stable},
        {"sha256:old": lock(PIP_OLD, DPKG_OLD), "sha256:new": lock(PIP_NEW, DPKG_OLD)},
    )
    e = entry()
    compare(CFG, e, resolver, "stable")
    assert (e.status, e.compared_with, e.note) == ("outdated", f"{REPO}:stable", "")
    assert [c.name for c in e.changes] == ["foo", "local-tool", "pandas"]
    text = "\n".join(format_entry(e))
    assert "status   OUTDATED (127.0.0.1:5000/hubstack/notebook:stable)" in text
    assert "    pip    pandas 2.2.2 -> 2.2.3" in text
    assert "lineage  base 111111111111, notebook 222222222222" in text


def test_current_by_image_id_or_by_registry_digest():
    by_id = entry("sha256:new")
    compare(
        CFG,
        by_id,
        FakeResolver({("notebook", "stable"): Target("s", "sha256:new", None)}, {}),
        "stable",
    )
    assert (by_id.status, by_id.changes) == ("current", None)
    by_digest = entry("sha256:pulled", digests=[f"{REPO}@sha256:d1"])
    resolver = FakeResolver({("notebook", "stable"): Target("s", None, "sha256:d1")}, {})
    compare(CFG, by_digest, resolver, "stable")
    assert by_digest.status == "current"


def test_stable_only_in_the_registry_is_outdated_without_a_package_diff():
    e = entry()
    resolver = FakeResolver({("notebook", "stable"): Target("s", None, "sha256:d2")}, {})
    compare(CFG, e, resolver, "stable")
    assert e.status == "outdated" and e.changes is None
    assert f"docker pull {REPO}@sha256:d2" in e.note


def test_without_stable_the_started_from_tag_is_used_and_said():
    # Notebooks and the Spark cluster both start from hub.notebook_image_tag.
    cfg = parse_config(
        {
            "base": {"extra_ca_bundle": "none"},
            "hub": {"notebook_image_tag": "nb"},
            "images": {"tag": "img"},
        }
    )
    resolver = FakeResolver(
        {
            ("notebook", "nb"): Target("nb", "sha256:old", None),
            ("notebook", "img"): Target("img", "sha256:other", None),
        },
        {},
    )
    nb = entry()
    compare(cfg, nb, resolver, "stable")
    assert (nb.status, nb.compared_with) == ("current", "nb")
    assert nb.note == "no stable of notebook yet: compared with nb"
    cluster = entry("sha256:old", kind="spark")
    compare(cfg, cluster, resolver, "stable")
    assert (cluster.status, cluster.compared_with) == ("current", "nb")
    lonely = entry()
    compare(cfg, lonely, FakeResolver({}, {}), "stable")
    assert lonely.status == "unknown" and "nothing to compare with" in lonely.note


# --- CI report ---------------------------------------------------------------------------
def test_ci_report_lists_package_differences_from_the_replaced_image():
    report = BuildReport("r1", "a" * 40, "b" * 40, "bbbbbbbbbbbb", True, "t0", "t1")
    report.images = [
        ImageOutcome(
            "notebook",
            "changed: images/notebook/Dockerfile",
            status="ok",
            previous_id="sha256:" + "c" * 64,
            package_changes=[PackageChange("pip", "pandas", "2.2.2", "2.2.3")],
        ),
        ImageOutcome(
            "spark",
            "parent python rebuilt",
            status="ok",
            previous_id="sha256:" + "d" * 64,
            package_changes=[],
        ),
        ImageOutcome("hub", "changed: hub/Dockerfile", status="ok"),
    ]
    lines = report.format_text().splitlines()
    assert "            packages since the image it replaces (cccccccccccc):" in lines
    assert "              pip    pandas 2.2.2 -> 2.2.3" in lines
    assert "            packages since the image it replaces (dddddddddddd):" in lines
    assert "              no package differences" in lines
    assert report.to_dict()["images"][0]["package_changes"] == [
        {"manager": "pip", "name": "pandas", "old": "2.2.2", "new": "2.2.3"}
    ]


def test_the_admins_page_escapes_what_it_shows():
    hostile = entry()
    hostile.analyst = "<script>x</script>"
    hostile.status, hostile.changes = "outdated", [PackageChange("pip", "a<b", None, "1")]
    page = render_html([hostile, entry("sha256:new")], "")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "pip  + a&lt;b 1" in page
    assert "2 running container(s), 1 on an older image" in page
