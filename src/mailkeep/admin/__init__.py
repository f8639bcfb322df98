"""Administration: roles and the operations behind the CLI and the HTTP API."""
