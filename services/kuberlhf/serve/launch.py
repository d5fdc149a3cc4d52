"""Start the reward service on Ray Serve: `start_reward_service` (returns its URL; tests and notebooks) and
`run_reward_service` (the `kuberlhf serve-reward` command: start, say where, wait until interrupted)."""

from __future__ import annotations

import os
import time

from kuberlhf.quiet import quiet_libraries

APP_NAME = "kuberlhf-reward"


def start_reward_service(model: str, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
                         batch_size: int = 64, cpus: float = 1.0, gpus: float = 0.0) -> str:
    """Deploy the reward model on the connected Ray (or start an embedded one); returns the scoring URL."""
    import ray
    from ray import serve

    from kuberlhf.serve.reward_service import ROUTE, reward_app

    quiet_libraries()
    if not ray.is_initialized():
        env = {"DS_ACCELERATOR": os.environ["DS_ACCELERATOR"]}
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", namespace="kuberlhf", runtime_env={"env_vars": env},
                 configure_logging=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(reward_app(model, batch_size, replicas, cpus, gpus), name=APP_NAME, route_prefix=ROUTE)
    return f"http://{host}:{port}{ROUTE}"


def run_reward_service(model: str, host: str, port: int, replicas: int, batch_size: int, cpus: float,
                       gpus: float) -> None:
    url = start_reward_service(model, host, port, replicas, batch_size, cpus, gpus)
    print(f"reward service for {model} at {url} (reward.url: {url}); Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
