"""ci/test.sh runs the suite as two pytest sessions at once (tests/conftest.py: STREAMS):
a module listed for the standalone stream must exist, and must not use the hub that the
other stream's session owns (it would start a second one)."""

from __future__ import annotations

import re

from tests.conftest import ROOT, STANDALONE_MODULES

# The session's shared hub, or the logged-in analysts on it (tests/integration/conftest.py).
SHARED_HUB = re.compile(r"\bhub_stack\b|[(,]\s*clients\s*[,)]")


def test_every_standalone_module_exists_and_brings_its_own_platform():
    assert len(set(STANDALONE_MODULES)) == len(STANDALONE_MODULES)
    for name in STANDALONE_MODULES:
        path = ROOT / "tests" / "integration" / f"{name}.py"
        assert path.is_file(), f"STANDALONE_MODULES names {name}, not in tests/integration"
        assert not SHARED_HUB.search(path.read_text()), (
            f"{name} uses the shared hub (hub_stack): it belongs to the hub stream"
        )
