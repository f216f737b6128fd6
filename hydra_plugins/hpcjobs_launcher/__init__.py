"""hpcjobs' Hydra launcher plugin (``hydra_plugins`` itself is a namespace package)."""
