"""The hub's banner: JupyterHub's `announcement`, read from a file on each page render.

The text lives in the hub's own volume (ANNOUNCEMENT_FILE); JupyterHub calls a callable
template variable per request, so `hubstack announce` (hubstack.hub.announce_cli) sets or
clears it without restarting the hub. It is how an admin asks analysts still on an older
image to restart their server after an upgrade.
"""

from __future__ import annotations

import html
from pathlib import Path

# Inside the hub container: the hub-data volume, beside the database.
ANNOUNCEMENT_FILE = Path("/srv/jupyterhub/announcement.txt")
MAX_CHARS = 2000


def read_announcement(_user=None, path: Path = ANNOUNCEMENT_FILE) -> str:
    """The banner as HTML-safe text ('' for none); JupyterHub's template marks it safe."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, OSError):
        return ""
    return html.escape(text[:MAX_CHARS])
