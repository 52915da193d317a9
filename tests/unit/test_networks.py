"""hubstack.networks: names, the address pool, and the host rules, from the platform config."""

from hubstack import networks
from hubstack.config import parse_config


def test_each_analyst_has_a_network_and_bridge_name_of_their_own():
    cfg = parse_config({"hub": {"network": "plat"}})
    assert networks.network_name(cfg, "alice") == "plat-user-alice"
    bridge = networks.bridge_name("plat-user-alice")
    assert bridge.startswith("hsu") and len(bridge) <= 15  # Linux's interface name limit
    assert bridge != networks.bridge_name("plat-user-bob")
    assert cfg.network.capacity == 2048  # /27s in the default /16


def test_host_rules_let_dns_through_and_drop_private_and_metadata_addresses():
    cfg = parse_config({"network": {"reachable": ["10.1.2.3"]}})
    rules = [" ".join(r) for r in networks.guard_rules(cfg, nameservers=["10.255.255.53"])]
    chain = networks.GUARD_CHAIN
    # Order matters: within a bridge, then the resolvers' port 53 and the exempted mirror,
    # then the drops, then everything else (public addresses) returns to Docker's rules.
    assert rules[0] == f"-A {chain} -i hsu+ -o hsu+ -j RETURN"
    assert rules[1:3] == [
        f"-A {chain} -i hsu+ -d 10.255.255.53 -p {proto} --dport 53 -j RETURN"
        for proto in ("udp", "tcp")
    ]
    assert rules[3] == f"-A {chain} -i hsu+ -d 10.1.2.3/32 -j RETURN"
    assert f"-A {chain} -i hsu+ -d 169.254.0.0/16 -j DROP" in rules
    assert f"-A {chain} -i hsu+ -d 10.0.0.0/8 -j DROP" in rules
    assert rules[-1] == f"-A {chain} -j RETURN"


def test_the_resolvers_come_from_resolv_conf_skipping_loopback_stubs(tmp_path):
    stub = tmp_path / "stub.conf"
    stub.write_text("nameserver 127.0.0.53\noptions edns0\n")
    upstream = tmp_path / "upstream.conf"
    upstream.write_text("# upstream\nnameserver 10.0.0.2\nnameserver fe80::1\nnameserver 1.1.1.1\n")
    assert networks.host_nameservers((stub, upstream)) == ["10.0.0.2", "1.1.1.1"]
    assert networks.host_nameservers((tmp_path / "missing",)) == []
