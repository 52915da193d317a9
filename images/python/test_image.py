"""python: the data stack in /opt/venv. Run by `hubstack ci build` (hubstack/ci/imagetest.py)."""


def test_venv_python_is_the_default(run):
    assert run("sh", "-c", "command -v python").check().strip() == "/opt/venv/bin/python"


def test_data_stack_imports(run):
    code = (
        "import numpy, pandas, jupyterlab, jupyterhub\n"
        "assert int(pandas.__version__.split('.')[0]) < 3, pandas.__version__\n"
        "print('ok', numpy.__version__, pandas.__version__)"
    )
    assert run("python", "-c", code).check().startswith("ok")


def test_runs_as_non_root(run):
    assert run("id", "-u").check().strip() != "0"
