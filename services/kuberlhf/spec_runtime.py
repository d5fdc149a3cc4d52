"""`spec.runtimeEnv`: Ray's runtime environment for every process of the job, the way Ray users ship their code
and packages: a working directory, more importable modules, pip packages, environment variables. The same on
an embedded Ray (`kuberlhf run`) and on a cluster (the RayJob's driver passes it on to every worker)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, model_validator

from kuberlhf.spec_base import SpecModel

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
RESERVED_ENV = ("PYTHONPATH", "DS_ACCELERATOR")  # what the job sets itself (launcher.ray_session)


class RuntimeEnvSpec(SpecModel):
    """Ray's `runtime_env` for the job's workers (docs/kubernetes.md: shipping your code)."""

    working_dir: str | None = None
    """A directory every worker runs in and imports from (your reward module), or a `.zip` URI (`s3://`,
    `gs://`, `https://`). A local directory is read on the driver's machine (on Kubernetes the head pod: e.g. a
    ConfigMap mounted with `cluster.volumes`) and uploaded by Ray, so at most 500 MiB; the driver imports from
    it too when it checks the reward function."""
    py_modules: list[str] = Field(default_factory=list)
    """More directories (each one importable package or module tree) or `.whl`/`.zip` URIs, importable in every
    worker (and by the driver's checks, when local)."""
    pip: list[str] = Field(default_factory=list)
    """Packages pip installs into a virtual environment for the workers (Ray caches it per node), e.g.
    `["math-verify==0.8.0"]`; the nodes need the package index. The driver does not get them: a reward function
    whose module imports only there is checked when the workers start. For production, bake them into the image
    (docs/kubernetes.md)."""
    env_vars: dict[str, str] = Field(default_factory=dict)
    """Environment variables of every worker process (on Kubernetes also see `cluster.env`, set on the pods)."""
    excludes: list[str] = Field(default_factory=list)
    """Files of `workingDir` not to upload (gitignore-style patterns, e.g. `["*.ckpt", "data/"]`)."""

    @model_validator(mode="after")
    def _env_names(self) -> "RuntimeEnvSpec":
        for name in self.env_vars:
            if not re.fullmatch(ENV_NAME, name):
                raise ValueError(f"envVars: {name!r} is not an environment variable name")
            if name in RESERVED_ENV:
                raise ValueError(f"envVars: {name} is set by the job itself (workingDir and pyModules are how "
                                 f"code becomes importable)")
        return self

    def local_paths(self) -> list[tuple[str, str]]:
        """(field, path) of each local directory (not a URI) the job names."""
        named = ([("runtimeEnv.workingDir", self.working_dir)] if self.working_dir else []) + \
            [(f"runtimeEnv.pyModules[{index}]", path) for index, path in enumerate(self.py_modules)]
        return [(field, path) for field, path in named if "://" not in path]

    def to_ray(self, job_env: dict[str, str]) -> dict[str, Any]:
        """Ray's runtime_env dict, with the job's own variables (`job_env`) added to the user's."""
        env: dict[str, Any] = {"env_vars": {**self.env_vars, **job_env}}
        for key in ("working_dir", "py_modules", "pip", "excludes"):
            value = getattr(self, key)
            if value:
                env[key] = value
        return env
