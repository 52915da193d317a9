#!/bin/sh
# spark-entrypoint master | worker [MASTER_URL] | <command...>
# Starts a Spark standalone daemon with spark-class from the pip pyspark, in the foreground.
# Settings come from the environment (hubstack.spark_cluster sets them from the platform config):
#   master: SPARK_MASTER_HOST, SPARK_MASTER_PORT, SPARK_MASTER_WEBUI_PORT, SPARK_DEFAULT_CORES
#   worker: SPARK_MASTER_URL, SPARK_WORKER_CORES, SPARK_WORKER_MEMORY, SPARK_WORKER_WEBUI_PORT
#   both:   SPARK_EXTRA_DEFAULTS, a spark-defaults.conf to add to the image's (an analyst's
#           cluster: its secret, which must never be in the environment)
# Work and scratch folders are made 0700: executors' files are readable by this user only.
set -eu

if [ "$(id -u)" = 0 ]; then
    echo "spark-entrypoint: refusing to run Spark as root; run as the analyst's UID:GID (or 185)" >&2
    exit 64
fi

if [ -n "${SPARK_EXTRA_DEFAULTS:-}" ]; then
    # The image's settings plus the extra file, in a private folder of this user's.
    conf="$(mktemp -d)"
    cp "${SPARK_CONF_DIR:-/etc/spark/conf}"/* "$conf"/
    cat "$SPARK_EXTRA_DEFAULTS" >>"$conf/spark-defaults.conf"
    export SPARK_CONF_DIR="$conf"
fi

role="${1:-worker}"
case "$role" in
master)
    shift
    host="${SPARK_MASTER_HOST:-$(hostname)}"
    # Cap for applications that do not set spark.cores.max themselves.
    if [ -n "${SPARK_DEFAULT_CORES:-}" ]; then
        SPARK_MASTER_OPTS="${SPARK_MASTER_OPTS:-} -Dspark.deploy.defaultCores=${SPARK_DEFAULT_CORES}"
        export SPARK_MASTER_OPTS
    fi
    exec spark-class org.apache.spark.deploy.master.Master \
        --host "$host" \
        --port "${SPARK_MASTER_PORT:-7077}" \
        --webui-port "${SPARK_MASTER_WEBUI_PORT:-8080}" "$@"
    ;;
worker)
    shift
    master="${1:-${SPARK_MASTER_URL:-spark://spark-master:7077}}"
    [ $# -gt 0 ] && shift
    mkdir -p "$SPARK_WORKER_DIR" "$SPARK_LOCAL_DIRS"
    chmod 0700 "$SPARK_WORKER_DIR" "$SPARK_LOCAL_DIRS"
    exec spark-class org.apache.spark.deploy.worker.Worker \
        --cores "${SPARK_WORKER_CORES:-1}" \
        --memory "${SPARK_WORKER_MEMORY:-1g}" \
        --work-dir "$SPARK_WORKER_DIR" \
        --webui-port "${SPARK_WORKER_WEBUI_PORT:-8081}" \
        "$@" "$master"
    ;;
*)
    exec "$@"
    ;;
esac
