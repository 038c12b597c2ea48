"""The in-process local Ray that jobs start: no job-wide runtime environment unless training."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile


def test_local_ray_for_data_jobs_has_no_worker_setup_hook(ray_local):
    @ray_local.remote
    def runtime_env() -> dict:
        import ray

        return dict(ray.get_runtime_context().runtime_env)

    assert "worker_process_setup_hook" not in ray_local.get(runtime_env.remote())


TRAINING_PROBE = """
import ray
from pipelines.ops.ray_runtime import init_ray

assert init_ray(num_cpus=1, training=True)

@ray.remote(num_cpus=0)
def runtime_env():
    return dict(ray.get_runtime_context().runtime_env)

print(ray.get(runtime_env.remote()).get("worker_process_setup_hook", "none"))
ray.shutdown()
"""


def test_local_ray_for_training_gives_workers_the_setup_hook():
    # A short folder: Ray's socket paths under it must stay within 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="ray-")
    environment = {
        **os.environ,
        "ENLIGHTENGAN_RAY_TMPDIR": temp_dir,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    environment.pop("RAY_ADDRESS", None)
    try:
        result = subprocess.run(
            [sys.executable, "-c", TRAINING_PROBE],
            capture_output=True,
            text=True,
            env=environment,
            timeout=300,
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] != "none"
