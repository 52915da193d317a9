"""How long after a starting server answers does the hub notice it? JupyterHub's own wait
(wait_for_http_server: random sleeps whose bound doubles from 0.2 s to 5 s) against the
spawner's (HubstackSpawner._until_answering: the port tried every answer_poll_interval).
The server is a local socket that starts listening AFTER seconds into the wait, as a
notebook server does after its imports; the start queue's slot is held until noticed.

    PYTHONPATH=$PWD python benchmarks/spawn/notice_delay.py [--after 2] [--runs 6]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jupyterhub.utils import wait_for_http_server

from hubstack.config import parse_config
from hubstack.hub.spawner import HubstackSpawner


async def answer(reader, writer) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:  # the spawner's port probe: connect, close
        writer.close()
        return
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


async def delay(how: str, after: float) -> float:
    """Seconds from the server's listening to the wait's return."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if how == "jupyterhub":
        wait = wait_for_http_server(f"http://127.0.0.1:{port}/", timeout=60)
    else:
        spawner = HubstackSpawner(platform=parse_config({}))
        spawner.user = SimpleNamespace(name="bench", url="/", groups=[])
        wait = spawner._until_answering(("127.0.0.1", port))
    waiting = asyncio.ensure_future(wait)
    await asyncio.sleep(after)
    server = await asyncio.start_server(answer, "127.0.0.1", port)
    up = asyncio.get_running_loop().time()
    async with server:
        await waiting
        return asyncio.get_running_loop().time() - up


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--after", type=float, default=2.0, help="seconds until the server listens")
    ap.add_argument("--runs", type=int, default=6)
    args = ap.parse_args()

    async def runs() -> None:  # one event loop: JupyterHub's HTTP client session is per loop
        for how in ("jupyterhub", "hubstack"):
            d = [await delay(how, args.after) for _ in range(args.runs)]
            shown = " ".join(f"{v:.2f}" for v in sorted(d))
            print(f"{how:<11} noticed after: median {statistics.median(d):.2f} s  ({shown})")

    asyncio.run(runs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
