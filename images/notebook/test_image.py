"""notebook: the analyst image. Run by `hubstack ci build` (see hubstack/ci/imagetest.py)."""


def test_singleuser_server_runs_as_non_root(run):
    out = run("sh", "-c", "id -u && jupyterhub-singleuser --version", user="1000:100").check()
    uid, version = out.split()[:2]
    assert uid == "1000" and version[0].isdigit()
