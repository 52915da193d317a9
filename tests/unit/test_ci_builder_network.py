"""Where the compose builder (compose/ci.yaml) sits on the network, as `hubstack up` renders
it from the platform config: off the host's network unless ci.host_network asks, published
on loopback by default, and reaching the registry's API by its service name."""

import pytest

from hubstack import stack
from hubstack.config import ConfigError, parse_config
from hubstack.registry import Credentials, RegistryClient


def test_builder_is_off_the_host_network_and_published_on_loopback_by_default():
    cfg = parse_config({"base": {"extra_ca_bundle": "none"}})
    assert cfg.ci.host_network is False and cfg.ci.host == "127.0.0.1"
    env = stack.compose_env(cfg)
    assert env["HUBSTACK_CI_NETWORK_MODE"] == cfg.hub.network != "host"
    assert (env["HUBSTACK_CI_HOST"], env["HUBSTACK_CI_PORT"]) == ("127.0.0.1", "8765")
    inside = parse_config(stack.ci_builder_config(cfg))
    # Inside its own network namespace it listens on every address; only the published
    # ci.host:ci.port reaches it from the host.
    assert inside.ci.host == "0.0.0.0"
    # Images keep the engine's registry address; API calls go to the service name.
    assert inside.image_ref("hub") == cfg.image_ref("hub")
    assert inside.registry_api_address == stack.PLATFORM_REGISTRY_ADDRESS == "registry:5000"
    client = RegistryClient(inside, credentials=Credentials("ci", "unused"))
    assert client.base_url == "http://registry:5000/v2"


def test_host_network_only_when_the_config_asks():
    cfg = parse_config(
        {"base": {"extra_ca_bundle": "none"}, "ci": {"host_network": True, "host": "10.0.0.5"}}
    )
    env = stack.compose_env(cfg)
    assert env["HUBSTACK_CI_NETWORK_MODE"] == "host"
    assert env["HUBSTACK_CI_HEALTH_URL"] == "http://10.0.0.5:8765/health"
    inside = parse_config(stack.ci_builder_config(cfg))
    assert inside.ci.host == "10.0.0.5"  # binds exactly what the config says
    assert inside.registry_api_address == cfg.registry.address


def test_a_bad_registry_api_address_is_refused():
    with pytest.raises(ConfigError, match="registry.api_address: must be host:port"):
        parse_config({"registry": {"api_address": "no port"}})
