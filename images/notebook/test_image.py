"""notebook: the analyst image. Run by `hubstack ci build` (see hubstack/ci/imagetest.py)."""

import json


def test_singleuser_server_runs_as_non_root(run):
    out = run("sh", "-c", "id -u && jupyterhub-singleuser --version", user="1000:100").check()
    uid, version = out.split()[:2]
    assert uid == "1000" and version[0].isdigit()


def test_server_extensions_are_lab_terminals_and_the_spark_ui_proxy_only(run):
    # What an analyst uses (JupyterLab, terminals, the Spark UI at /proxy/4040/) stays on;
    # jupyter_lsp and notebook_shim cost every server start and serve nothing here.
    code = (
        "import json\n"
        "from jupyter_server.extension.config import ExtensionConfigManager\n"
        "from jupyter_core.paths import jupyter_config_path\n"
        "m = ExtensionConfigManager(read_config_path=jupyter_config_path())\n"
        "print(json.dumps(m.get_jpserver_extensions()))"
    )
    enabled = json.loads(run("python", "-c", code, user="1000:100").check().splitlines()[-1])
    assert {k for k, on in enabled.items() if on} == {
        "jupyterlab",
        "jupyter_server_terminals",
        "jupyter_server_proxy",
    }, enabled


def test_every_venv_module_is_byte_compiled_so_a_server_start_compiles_nothing(run):
    # The server runs as the analyst's UID and cannot write __pycache__ into the root-owned
    # venv: a module without a current .pyc is compiled from source at every start.
    code = r"""
import importlib.util, pathlib, sysconfig
stale = []
for src in pathlib.Path(sysconfig.get_paths()["purelib"]).rglob("*.py"):
    try:
        head = open(importlib.util.cache_from_source(str(src)), "rb").read(16)
    except OSError:
        stale.append(str(src)); continue
    st = src.stat()
    flags = int.from_bytes(head[4:8], "little")
    same_source = flags != 0 or (
        int.from_bytes(head[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
        and int.from_bytes(head[12:16], "little") == st.st_size & 0xFFFFFFFF
    )
    if head[:4] != importlib.util.MAGIC_NUMBER or not same_source:
        stale.append(str(src))
print(len(stale), *stale[:10])
"""
    out = run("python", "-c", code, user="1000:100").check().strip()
    assert out.split()[0] == "0", f"modules without a current .pyc: {out}"


def loaded_after_importing(run, imports: str, modules: tuple[str, ...]) -> str:
    """Which of MODULES are in sys.modules once IMPORTS are imported, as the analyst."""
    code = f"import sys, {imports}\nprint(sorted(m for m in {modules!r} if m in sys.modules))"
    return run("python", "-c", code, user="1000:100").check().strip()


def test_server_start_imports_neither_pyspark_nor_the_iri_grammar(run):
    # What jupyterhub-singleuser and its extensions import: no Spark (no JVM at server start)
    # and not rfc3987_syntax, which builds ~35 parsers at import (docs/performance.md).
    imports = (
        "jupyterhub.singleuser.extension, jupyterlab.labapp, jupyter_server_proxy, "
        "jupyter_server_terminals, jupyter_server.serverapp"
    )
    modules = ("pyspark", "py4j", "rfc3987_syntax", "pandas", "numpy")
    assert loaded_after_importing(run, imports, modules).endswith("[]")


def test_server_start_leaves_the_hubs_database_layer_unloaded(run):
    # jupyterhub-lazy-imports.patch: the single-user server imports jupyterhub.log, .scopes,
    # .metrics and .utils; their hub-only imports (the hub's handlers, sqlalchemy, alembic,
    # the ORM) happen at first use instead (docs/performance.md).
    imports = (
        "jupyterhub.singleuser.extension, jupyterhub.singleuser.mixins, jupyterhub.singleuser.app"
    )
    modules = ("sqlalchemy", "alembic", "jupyterhub.orm", "jupyterhub.handlers")
    assert loaded_after_importing(run, imports, modules).endswith("[]")


def test_the_deferred_imports_still_load_where_they_are_used(run):
    # The patched functions behave as upstream's: the scope check the server's auth makes,
    # the ORM on first use, the database-error guard, the request log.
    code = r"""
import asyncio, logging
from jupyterhub import log, metrics, scopes, utils
have = {"read:users", "admin:users"}
assert scopes._intersect_expanded_scopes({"read:users"}, have) == {"read:users"}
assert scopes.orm.User.__tablename__ == "users" and metrics.orm.User is scopes.orm.User
from sqlalchemy.exc import OperationalError
class H:
    log = logging.getLogger("t")
    rolled = False
    class db:
        @staticmethod
        def rollback():
            H.rolled = True
@utils.catch_db_error
def db_fails(self):
    raise OperationalError("select", {}, Exception("gone"))
@utils.catch_db_error
def other_fails(self):
    raise KeyError("x")
assert asyncio.run(db_fails(H())) is None and H.rolled
try:
    asyncio.run(other_fails(H()))
except KeyError:
    pass
else:
    raise AssertionError("a non-database error was swallowed")
from jupyterhub.handlers.pages import HealthCheckHandler
assert log._health_check_handlers() == (HealthCheckHandler,)
print("ok")
"""
    assert run("python", "-c", code, user="1000:100").check().strip().endswith("ok")


def test_jupyterlab_extension_manager_is_the_read_only_one(run):
    # The PyPI manager costs every start an HTTP client and a TLS context, for installs that
    # cannot succeed in the analyst's venv (root's, no user site-packages).
    code = (
        "from jupyterlab.labapp import LabApp\n"
        "app = LabApp()\n"
        "app.load_config_file()\n"
        "print(app.extension_manager)"
    )
    assert run("python", "-c", code, user="1000:100").check().strip().endswith("readonly")
