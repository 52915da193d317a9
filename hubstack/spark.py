"""Spark driver settings for notebooks, and the cluster's compose settings.

Interface (owned by the Spark issue; the spawner and `hubstack up` call these):
- driver_environment(cfg, driver_host) -> env for a Spark-profile notebook container
- compose_env(cfg) -> variables the compose file reads for the Spark services
"""

from __future__ import annotations

from hubstack.config import PlatformConfig


def driver_environment(cfg: PlatformConfig, driver_host: str) -> dict[str, str]:
    """Environment that makes SparkSession.builder.getOrCreate() run on the cluster."""
    return {}


def compose_env(cfg: PlatformConfig) -> dict[str, str]:
    """Variables for compose/spark.yaml (worker count, cores, memory, ports, image)."""
    return {}
