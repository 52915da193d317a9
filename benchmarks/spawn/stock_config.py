# Benchmark baseline: the hubstack hub, but with stock DockerSpawner starting the same image.
load_subconfig("/etc/jupyterhub/jupyterhub_config.py")
import os

c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
c.DockerSpawner.image = os.environ["BENCH_IMAGE"]
c.DockerSpawner.network_name = os.environ["BENCH_NETWORK"]
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.remove = True
c.DockerSpawner.prefix = os.environ["BENCH_NETWORK"] + "-stock"
c.DockerSpawner.pull_policy = "ifnotpresent"
c.DockerSpawner.cmd = ["jupyterhub-singleuser"]
c.DockerSpawner.extra_create_kwargs = {"labels": {"io.hubstack.user": "bench"}}
