"""The in-process local Ray that jobs start: no job-wide runtime environment unless training."""

from __future__ import annotations


def test_local_ray_for_data_jobs_has_no_worker_setup_hook(ray_local):
    @ray_local.remote
    def runtime_env() -> dict:
        import ray

        return dict(ray.get_runtime_context().runtime_env)

    assert "worker_process_setup_hook" not in ray_local.get(runtime_env.remote())
