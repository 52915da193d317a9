"""Idle culling: jupyterhub-idle-culler as a managed hub service, driven by hub.cull.

The culler asks the hub's REST API which servers have been idle for idle_timeout seconds
and stops them (DELETE /users/NAME/server), exactly as the analyst's own Stop button
does: HubstackSpawner.stop removes the container (so its GPU labels go and the GPU is
free), stops the analyst's Spark cluster and removes their network; the home folder is
never touched. Its token holds only the scopes that job needs.

Exempt analysts (hub.cull.exempt) are skipped through the culler's own hook
(IdleCuller.cull_arbiter_hook); `python -m hubstack.hub.cull` is the culler with that hook
set from the list the hub passes in the service's environment.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

from traitlets.config import Config

from hubstack.config import PlatformConfig

CULLER_SERVICE = "idle-culler"
CULLER_ROLE = "idle-culler"
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
"""What the culler reads (who has servers, their last activity) and does (stop one); it
cannot start servers, read anyone's files or change users."""
EXEMPT_ENV = "HUBSTACK_CULL_EXEMPT"


def culler_service(cfg: PlatformConfig) -> dict | None:
    """The culler's entry in JupyterHub.services; None when culling is off."""
    cull = cfg.hub.cull
    if not cull.enabled:
        return None
    return {
        "name": CULLER_SERVICE,
        "command": [
            sys.executable,
            "-m",
            "hubstack.hub.cull",
            f"--timeout={cull.idle_timeout}",
            f"--cull-every={cull.check_every}",
        ],
        "environment": {EXEMPT_ENV: json.dumps(cull.exempt)},
    }


def culler_role() -> dict:
    """The culler token's role: CULLER_SCOPES only."""
    return {"name": CULLER_ROLE, "scopes": CULLER_SCOPES, "services": [CULLER_SERVICE]}


def exempting_arbiter(exempt: list[str], cull_idle: Callable[..., bool]) -> Callable[..., bool]:
    """A cull_arbiter_hook: CULL_IDLE's decision, except never for EXEMPT analysts' servers.
    The server model's full_name is NAME/SERVER_NAME."""
    never = frozenset(exempt)

    def arbiter(*, server: dict, **kwargs) -> bool:
        owner = str(server.get("full_name") or "").split("/", 1)[0]
        if owner in never:
            return False
        return cull_idle(server=server, **kwargs)

    return arbiter


def main(argv: list[str] | None = None) -> None:
    """Run jupyterhub-idle-culler with the exempting hook (the hub starts this)."""
    # Only the culler's own process needs the culler; the hub imports this module for the
    # service's settings alone.
    from jupyterhub_idle_culler import IdleCuller, default_cull_arbiter  # noqa: PLC0415

    exempt = json.loads(os.environ.get(EXEMPT_ENV) or "[]")
    config = Config()
    config.IdleCuller.cull_arbiter_hook = exempting_arbiter(exempt, default_cull_arbiter)
    if exempt:
        print(f"idle culler: never culling {', '.join(exempt)} (hub.cull.exempt)", flush=True)
    IdleCuller.launch_instance(argv=argv, config=config)


if __name__ == "__main__":
    main()
