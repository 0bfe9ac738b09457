"""The sidecar: the middleware around the upstream proxy, and its server."""
