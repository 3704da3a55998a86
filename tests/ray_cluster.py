"""A real local Ray cluster for the distributed tests: started by the fixture in this process's session
(head node on 127.0.0.1, 2 CPUs: two one-CPU workers), stopped by ``ray.shutdown()`` when the session ends
(it stops exactly the processes it started). Skipped with a printed reason only where Ray cannot be
imported. Use: ``from ray_cluster import ray_cluster  # noqa: F401`` in a test module."""

from __future__ import annotations

import os

import pytest

N_CPUS = 2


@pytest.fixture(scope="session")
def ray_cluster():
    try:
        import ray
    except ImportError as err:
        reason = f"Ray is not installed ({err}); pip install 'sae-lens-autointerp[ray]'"
        print(f"SKIPPED Ray tests: {reason}")
        pytest.skip(reason)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        ray.shutdown()
    context = ray.init(
        num_cpus=N_CPUS,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield context
    finally:
        ray.shutdown()
