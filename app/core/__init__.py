"""The core library: schema, catalog I/O, the model registry and model objects, environment.

Imports nothing from the service, the painting engines, the CLI or training (import-linter contracts
in pyproject.toml)."""
