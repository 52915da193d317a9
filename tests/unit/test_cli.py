"""The hubstack command as a user installs it: `pip install .` brings no test tools."""

from __future__ import annotations

import subprocess
import sys

# Test-only packages (pyproject.toml's `test` extra) that no command may need to import.
TEST_ONLY = ("pytest", "selenium", "websocket", "compose")


def test_every_command_loads_without_the_test_extras():
    # A None entry in sys.modules makes `import NAME` fail as if it were not installed.
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({TEST_ONLY!r}));"
        "from hubstack.cli import build_parser; build_parser().parse_args(['--help'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for command in (
        "images",
        "users",
        "gpus",
        "announce",
        "up",
        "down",
        "status",
        "env",
        "backup",
        "restore",
        "upgrade",
        "ci",
        "doctor",
    ):
        assert f"    {command} " in proc.stdout, f"`hubstack {command}` missing:\n{proc.stdout}"


# What only the hub process needs: its login sources (oauthenticator, which imports
# jsonschema, which builds its rfc3987 parsers for seconds wherever rfc3987-syntax is
# installed, as in the test environment) and its database layer (jupyterhub.orm).
HUB_ONLY = ("oauthenticator", "jsonschema", "jupyterhub.orm", "ldap3")


def test_a_command_starts_without_the_hubs_login_and_database_layers():
    """Each `hubstack ...` call loads every command module; none may import what only the
    hub needs (it cost every call about 2.5 CPU-s here, measured with -X importtime)."""
    code = (
        "import sys; from hubstack.cli import build_parser; build_parser();"
        f"print(','.join(m for m in {HUB_ONLY!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"imported at start: {proc.stdout.strip()}"
