"""An embedded local Ray that nobody else can use: every Ray server on loopback, and Ray's token auth on with a
fresh random token per run.

Ray's core servers (GCS, raylets, workers, object manager) listen on the node's address. `ray.init(address=
"local")` picks the machine's network address even when told `127.0.0.1` (Ray turns loopback into a
"remotely reachable" address, so other machines could join); Ray's own switch for single-machine platforms
(`ENABLE_RAY_CLUSTER`, off on macOS and Windows) keeps loopback. With it, and the dashboard on 127.0.0.1, the
only way in is from this machine, and the token closes that to other local users. A user who exports
RAY_AUTH_MODE=disabled gets no token (and a warning); a run on a cluster ($RAY_ADDRESS) uses the cluster's
settings.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

AUTH_MODE, AUTH_TOKEN = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"
TOKEN_FILE = "kuberlhf-auth-token"


@contextmanager
def token_auth() -> Iterator[str | None]:
    """Inside: Ray's token auth on, with a fresh token in this process's environment (Ray's processes inherit
    it). Yields the token, or None when the user turned auth off (RAY_AUTH_MODE=disabled). The environment is
    restored on exit (after `ray.shutdown()`)."""
    saved = {name: os.environ.get(name) for name in (AUTH_MODE, AUTH_TOKEN)}
    if (saved[AUTH_MODE] or "").lower() == "disabled":
        yield None
        return
    token = secrets.token_hex(32)
    os.environ[AUTH_MODE], os.environ[AUTH_TOKEN] = "token", token
    _reload_ray_auth()
    try:
        yield token
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reload_ray_auth()


@contextmanager
def loopback_node() -> Iterator[None]:
    """While a local node starts inside: its address resolves to loopback (see the module docstring)."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def save_token(token: str, session_dir: str) -> Path:
    """The token in a file only this user can read, in Ray's session directory (gone with the session): what
    the dashboard's sign-in page asks for."""
    path = Path(session_dir) / TOKEN_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token)
    return path


def _reload_ray_auth() -> None:
    """Ray reads the auth mode and token once and caches them: make this process see the new ones."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
