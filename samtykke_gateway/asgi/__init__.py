"""The ASGI adapter: the consent middleware, the scoped release, headers, error bodies."""
