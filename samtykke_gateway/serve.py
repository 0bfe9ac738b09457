"""``samtykke-gateway serve``: the sidecar under uvicorn."""

from __future__ import annotations

import sys

from .config import load_config
from .exceptions import ConfigError

__all__ = ["serve"]


def serve(config_path: str, *, host: str, port: int, workers_note: bool = False) -> int:
    """Validate the config, then run the sidecar until SIGINT/SIGTERM.

    :returns: exit code (2 when the config is invalid).
    """
    import uvicorn

    from .app import SidecarApp

    try:
        config = load_config(config_path)
        app = SidecarApp(config)
    except (ConfigError, ValueError) as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                server_header=False, proxy_headers=False)
    return 0
