"""The ``samtykke-gateway`` command line: serve, check-config, explain, demo, audit, state."""
