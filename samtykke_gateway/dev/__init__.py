"""The offline dev kit: a dev issuer, its commands, a threaded server, an example upstream."""
