"""spark-executor: the notebook image plus Spark's master/worker entrypoint.
Run by `hubstack ci build` (see hubstack/ci/imagetest.py)."""


def test_same_python_and_pyspark_as_the_notebook(run):
    code = "import sys, pyspark; print(sys.executable, pyspark.__version__)"
    out = run("/opt/venv/bin/python", "-c", code, entrypoint=[]).check()
    assert out.startswith("/opt/venv/bin/python") and out.split()[1][0] >= "4"


def test_java_runs_as_non_root(run):
    out = run("sh", "-c", "id -u; java -version 2>&1", entrypoint=[]).check()
    assert out.splitlines()[0] != "0" and "openjdk" in out.lower()
