"""The built-in plugins, registered directly by the registry (as tox registers its own)."""

DEFAULT_PLUGINS: tuple[str, ...] = ()
