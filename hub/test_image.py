"""hub: JupyterHub, the proxy and the hubstack package. Run by `hubstack ci build`
(see hubstack/ci/imagetest.py)."""


def test_hub_proxy_and_hubstack_are_installed(run):
    out = run(
        "sh",
        "-c",
        "jupyterhub --version && configurable-http-proxy --version && "
        "python -c 'import hubstack, dockerspawner; print(\"hubstack\", hubstack.__version__)'",
        entrypoint=[],
    ).check()
    assert "hubstack" in out
