"""IPython startup file for Spark-profile notebooks (runs inside the notebook container).

The spawner writes this file to /etc/ipython/startup/ of a Spark-profile container
(hubstack.spark.driver_files). It only imports the standard library and pyspark.

Why: when the standalone master is down, Spark's client retries registration for about a
minute and then fails with "Cannot call methods on a stopped SparkContext", which does
not say what was unreachable. This wraps SparkSession.Builder.getOrCreate so that a plain
`SparkSession.builder.getOrCreate()` on the cluster
- first checks, within a few seconds, that the master's port accepts connections, and
- turns any failure to start the application into an error that names the master URL.
Sessions for another master (`.master("local[*]")`) are left untouched.
"""

import os
import shlex
import socket
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 10


def _cluster_master(builder):
    """The spark:// URL this builder will use, or None when it does not use the cluster."""
    master = builder._options.get("spark.master")
    if master is None:
        args = shlex.split(os.environ.get("PYSPARK_SUBMIT_ARGS", ""))
        if "--master" in args[:-1]:
            master = args[args.index("--master") + 1]
    return master if master and master.startswith("spark://") else None


class SparkMasterUnreachable(RuntimeError):
    """The cluster's master could not be reached or did not accept the application."""


def _check_reachable(master):
    for hostport in urlparse(master).netloc.split(","):
        host, _, port = hostport.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
            return
        except (OSError, ValueError) as e:
            error = e
    raise SparkMasterUnreachable(
        f"Spark master {master} is not reachable ({error}); the cluster may be down - "
        "ask the platform team, or use SparkSession.builder.master('local[*]') meanwhile"
    )


def _install():
    try:
        from pyspark.sql import SparkSession  # noqa: PLC0415 - optional: kernels without pyspark
    except ImportError:
        return
    builder_class = SparkSession.Builder
    original = builder_class.getOrCreate
    if getattr(original, "_hubstack_wrapped", False):
        return

    def getOrCreate(self):
        master = _cluster_master(self)
        if master is None or SparkSession.getActiveSession() is not None:
            return original(self)
        _check_reachable(master)
        try:
            return original(self)
        except Exception as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SparkMasterUnreachable(
                f"could not start a Spark application on the master {master}: {first_line}"
            ) from e

    getOrCreate._hubstack_wrapped = True  # type: ignore[attr-defined]
    getOrCreate.__doc__ = original.__doc__
    builder_class.getOrCreate = getOrCreate


_install()
del _install
