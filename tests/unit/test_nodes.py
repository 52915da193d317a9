"""`hubstack nodes` parts that need no engine, and swarm mode's refusals (the swarm itself:
tests/integration/test_swarm_nodes.py)."""

from __future__ import annotations

import pytest

from hubstack.cli import main
from hubstack.errors import CommandError
from hubstack.nodes import NodeRow, _resources, format_nodes, parse_assignments


def test_gpus_count_named_and_discrete_resources_of_the_configured_kind():
    advertised = [
        {"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-a"}},
        {"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-b"}},
        {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}},
        {"DiscreteResourceSpec": {"Kind": "FPGA", "Value": 7}},
    ]
    assert _resources(advertised, "NVIDIA-GPU") == 4
    assert _resources(None, "NVIDIA-GPU") == 0


def test_the_table_says_free_gpus_labels_and_analysts():
    rows = [
        NodeRow(
            *("gpu1", "id1", "manager", "ready", "active", "10.0.0.1", {"hubstack.gpu": "true"}),
            gpus_total=2,
            gpus_used=1,
            analysts=["alice"],
        ),
        NodeRow("cpu1", "id2", "worker", "down", "drain", "10.0.0.2", {}, 0, 0),
    ]
    table = format_nodes(rows)
    assert table[1].split() == [
        *("gpu1", "manager", "ready", "active", "10.0.0.1", "1", "free", "of", "2"),
        *("hubstack.gpu=true", "alice"),
    ]
    assert table[2].split() == ["cpu1", "worker", "down", "drain", "10.0.0.2", "-", "-", "-"]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["hubstack.gpu"], "write KEY=VALUE"),
        (["Bad=1"], "node label 'Bad'"),
        (["com.docker.x=1"], "Docker's own"),
        (["site=two words"], "the value must be"),
    ],
)
def test_label_assignments_are_checked_before_any_change(items, message):
    with pytest.raises(CommandError, match=message):
        parse_assignments(items)


def test_up_in_swarm_mode_on_an_engine_that_is_no_manager_says_so_before_writing(
    tmp_path, capsys, monkeypatch
):
    class NotAManager:
        def info(self):
            return {"Swarm": {"LocalNodeState": "inactive", "ControlAvailable": False}}

    monkeypatch.setattr("hubstack.stack.docker_client", NotAManager)
    config = tmp_path / "hubstack.yaml"
    config.write_text(f"state_dir: {tmp_path}\ncluster:\n  mode: swarm\n")
    assert main(["-c", str(config), "up"]) == 2
    err = capsys.readouterr().err
    assert "this engine is not a Swarm manager (swarm state: inactive)" in err
    assert "docker swarm init" in err
    assert not (tmp_path / "secrets").exists()  # refused before anything was written
