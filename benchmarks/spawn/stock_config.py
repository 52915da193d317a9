# Benchmark baseline: the hubstack hub, but with stock DockerSpawner starting the same image.
load_subconfig("/etc/jupyterhub/jupyterhub_config.py")  # noqa: F821
import os  # noqa: E402

c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"  # noqa: F821
c.DockerSpawner.image = os.environ["BENCH_IMAGE"]  # noqa: F821
c.DockerSpawner.network_name = os.environ["BENCH_NETWORK"]  # noqa: F821
c.DockerSpawner.use_internal_ip = True  # noqa: F821
c.DockerSpawner.remove = True  # noqa: F821
c.DockerSpawner.prefix = os.environ["BENCH_NETWORK"] + "-stock"  # noqa: F821
c.DockerSpawner.pull_policy = "ifnotpresent"  # noqa: F821
c.DockerSpawner.cmd = ["jupyterhub-singleuser"]  # noqa: F821
c.DockerSpawner.extra_create_kwargs = {"labels": {"io.hubstack.user": "bench"}}  # noqa: F821
