"""spark: a JRE and pyspark in /opt/venv. Run by `hubstack ci build` (hubstack/ci/imagetest.py)."""


def test_local_spark_session_runs_a_job(run):
    code = (
        "from pyspark.sql import SparkSession\n"
        "s = SparkSession.builder.master('local[1]').appName('ci').getOrCreate()\n"
        "print('SUM', s.range(10).selectExpr('sum(id)').first()[0])\n"
        "s.stop()"
    )
    out = run("python", "-c", code, timeout=300).check()
    assert "SUM 45" in out
