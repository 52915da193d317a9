"""`hubstack env serve`: the environment report (hubstack.envreport) as a page behind the
hub's login, run by the hub as a managed service. Its own module: JupyterHub's service auth
imports the hub's database layer, which no other command needs at start."""

from __future__ import annotations

import asyncio
import os

import tornado.ioloop
import tornado.web
from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated

from hubstack.config import PlatformConfig
from hubstack.engine import docker_client
from hubstack.envreport import ENV_REPORT_SERVICE, env_report, render_html


class ReportPage(HubOAuthenticated, tornado.web.RequestHandler):
    """The report for whoever the hub lets through: the service's access scope, which only
    the admin role holds."""

    def initialize(self, cfg: PlatformConfig) -> None:
        self.cfg = cfg

    @tornado.web.authenticated
    async def get(self) -> None:
        entries, note = await asyncio.to_thread(env_report, self.cfg, docker_client())
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(render_html(entries, note))


def serve(cfg: PlatformConfig, port: int) -> int:
    prefix = f"/services/{ENV_REPORT_SERVICE}/"
    app = tornado.web.Application(
        [
            (prefix, ReportPage, {"cfg": cfg}),
            (f"{prefix}oauth_callback", HubOAuthCallbackHandler),
        ],
        # Only this process's login cookies: a restart asks the hub again (no prompt).
        cookie_secret=os.urandom(32),
    )
    app.listen(port, address="127.0.0.1")
    print(f"env report page on 127.0.0.1:{port}{prefix}", flush=True)
    tornado.ioloop.IOLoop.current().start()
    return 0
