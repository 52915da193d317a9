from pathlib import Path

import pytest

from hubstack.config import (
    ConfigError,
    host_ca_bundle,
    host_pip_index_url,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_documents_the_defaults():
    # The example is the documentation: it must say exactly what an empty config means.
    assert load_config(ROOT / "hubstack.example.yaml").model_dump() == parse_config({}).model_dump()


def test_errors_name_file_key_and_problem(tmp_path):
    f = tmp_path / "hubstack.yaml"
    f.write_text("registry:\n  address: nowhere\n  adress: x\nresources:\n  mem_limit: lots\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert f"{f}: registry.address: must be host:port, got 'nowhere'" in msg
    assert f"{f}: registry.adress: unknown key" in msg
    assert f"{f}: resources.mem_limit: must be a size" in msg


def test_malformed_yaml_names_the_line(tmp_path):
    f = tmp_path / "hubstack.yaml"
    f.write_text("registry:\n  address: [unclosed\n")
    with pytest.raises(ConfigError, match=r"hubstack.yaml: line \d+, column \d+: not valid YAML"):
        load_config(f)


def test_top_level_must_be_a_mapping(tmp_path):
    f = tmp_path / "hubstack.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"\(top level\): must be a mapping"):
        load_config(f)


def test_missing_ca_bundle_is_named(tmp_path):
    f = tmp_path / "hubstack.yaml"
    f.write_text("base:\n  extra_ca_bundle: no-such-ca.pem\n")
    with pytest.raises(
        ConfigError, match=r"base.extra_ca_bundle: file .*no-such-ca.pem does not exist"
    ):
        load_config(f)


def test_relative_paths_are_relative_to_the_file(tmp_path):
    f = tmp_path / "conf" / "hubstack.yaml"
    f.parent.mkdir()
    f.write_text("state_dir: ../state\n")
    assert load_config(f).state_dir.resolve() == (tmp_path / "state").resolve()


def test_duplicate_profiles_refused():
    with pytest.raises(ConfigError, match="duplicate profile name 'default'"):
        parse_config(
            {
                "profiles": [
                    {"name": "default", "display_name": "a"},
                    {"name": "default", "display_name": "b"},
                ]
            }
        )


def test_builds_trust_the_hosts_ca_bundle_unless_told_none(tmp_path):
    host = host_ca_bundle()
    assert parse_config({}).base.extra_ca_bundle == host
    f = tmp_path / "hubstack.yaml"
    f.write_text("base:\n  extra_ca_bundle: none\n")  # `none` is a word, not a relative path
    assert load_config(f).base.extra_ca_bundle is None
    f.write_text("base:\n  extra_ca_bundle: null\n")  # an explicit null is the default
    assert load_config(f).base.extra_ca_bundle == host


def test_pip_index_follows_the_hosts_when_it_is_a_url(monkeypatch):
    host_pip_index_url.cache_clear()
    monkeypatch.setenv("PIP_INDEX_URL", "https://pypi.mirror.invalid/simple")
    try:
        assert parse_config({}).base.index_url == "https://pypi.mirror.invalid/simple"
        assert parse_config({"base": {"pip_index_url": "pypi"}}).base.index_url is None
        host_pip_index_url.cache_clear()
        # A local folder index means nothing inside a container: PyPI then.
        monkeypatch.setenv("PIP_INDEX_URL", "file:///opt/pypi/simple")
        assert parse_config({}).base.index_url is None
    finally:
        host_pip_index_url.cache_clear()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("hub", "must start with http:// or https://"),
        ("hub.example.org", "must start with http:// or https://"),
        ("https://", "names no host"),
        ("http://:8000", "names no host"),
        ("ftp://hub.example.org", "must be an http:// or https:// URL"),
        ("https://hub.example.org/jupyter", "must be only scheme://HOST[:PORT]"),
        ("https://admin:pw@hub.example.org", "must be only scheme://HOST[:PORT]"),
        ("http://127.0.0.1:8000", "must name a DNS host, not an IP address"),
        ("https://hub_1.example.org", "is not a DNS name"),
        ("http://localhost:99999", "is not a URL"),
        # http is reached directly: its port (80 when not written) is where the hub is published.
        ("http://localhost:8001", "has port 8001, not hub.port 8000"),
        ("http://hub.example.org", "has port 80, not hub.port 8000"),
    ],
)
def test_a_bad_subdomain_host_is_refused_with_the_reason(value, problem):
    with pytest.raises(ConfigError) as e:
        parse_config({"hub": {"subdomain_host": value}})
    assert problem in str(e.value)
    assert "subdomain_host" in str(e.value)


def test_subdomain_host_is_where_people_open_the_hub():
    assert parse_config({}).hub.public_url == "http://127.0.0.1:8000/"
    local = parse_config({"hub": {"port": 8123, "subdomain_host": "http://localhost:8123/"}})
    assert local.hub.subdomain_host == "http://localhost:8123"
    assert local.hub.public_url == "http://localhost:8123/"
    # https is a TLS terminator's address: it forwards to hub.port from its own port.
    public = parse_config({"hub": {"subdomain_host": "https://Hub.Example.org"}})
    assert public.hub.public_url == "https://hub.example.org/"


def test_cluster_defaults_to_one_host_and_places_profiles_by_what_they_need():
    cfg = parse_config({})
    assert cfg.cluster.mode == "single"
    by_name = {p.name: cfg.placement_constraints(p) for p in cfg.profiles}
    assert by_name == {
        # Off GPU nodes unless it needs a GPU (a node without the label is not one).
        "default": ["node.labels.hubstack.gpu!=true"],
        "spark": ["node.labels.hubstack.gpu!=true", "node.labels.hubstack.spark==true"],
        "gpu": ["node.labels.hubstack.gpu==true"],
    }


def test_placement_follows_the_configured_labels_and_a_profile_may_say_its_own():
    cfg = parse_config(
        {
            "cluster": {"mode": "swarm", "node_labels": {"gpu": "site.accel"}},
            "profiles": [
                {"name": "big", "display_name": "Big", "gpus": 2},
                {
                    "name": "lab2",
                    "display_name": "Lab 2",
                    "gpus": 1,
                    "placement": {"site.room": "lab2", "hubstack.gpu": "true"},
                },
            ],
        }
    )
    big, lab2 = cfg.profiles
    assert cfg.placement_constraints(big) == ["node.labels.site.accel==true"]
    assert cfg.placement_constraints(lab2) == [
        "node.labels.hubstack.gpu==true",
        "node.labels.site.room==lab2",
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cluster": {"mode": "kubernetes"}}, "cluster.mode: Input should be 'single' or 'swarm'"),
        ({"cluster": {"node_labels": {"gpu": "Has Space"}}}, "cluster.node_labels.gpu: "),
        ({"cluster": {"node_labels": {"gpu": "com.docker.gpu"}}}, "Docker's own"),
        ({"cluster": {"gpu_resource": "gpu=1"}}, "cluster.gpu_resource: "),
        (
            {"profiles": [{"name": "x", "display_name": "X", "placement": {"a": "x==y"}}]},
            "profiles.0.placement: ",
        ),
    ],
)
def test_bad_cluster_settings_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_config(data)
