"""What every notebook container is created with, whatever its profile: the analyst's
identity from the first process, and the lockdown (no capabilities, no-new-privileges,
a pids limit). A GPU grant (hubstack.hub.gpu) adds its own labels and host settings.

No JupyterHub import here, so the real GPU check (tests/gpu/check.py), which runs where
JupyterHub is not installed, creates its containers from this very code.
"""

from __future__ import annotations

USER_LABEL = "io.hubstack.user"
PROFILE_LABEL = "io.hubstack.profile"
DEFAULT_PIDS_LIMIT = 1024


def create_kwargs(
    user_name: str,
    profile_name: str,
    ident: dict,
    labels: dict | None = None,
    grant_labels: dict | None = None,
) -> dict:
    """docker create arguments: run as UID:GID in the home, labelled with owner and profile."""
    return {
        "user": f"{ident['uid']}:{ident['gid']}",
        "working_dir": ident["home"],
        "labels": {
            USER_LABEL: user_name,
            PROFILE_LABEL: profile_name,
            **(labels or {}),
            **(grant_labels or {}),
        },
    }


def host_config(
    ident: dict, pids_limit: int = DEFAULT_PIDS_LIMIT, grant_host_config: dict | None = None
) -> dict:
    """HostConfig settings: the analyst's supplementary groups and the lockdown."""
    return {
        "group_add": [str(g) for g in ident["groups"]],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": pids_limit,
        **(grant_host_config or {}),
    }
