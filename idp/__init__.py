"""idhub: identity hub and SSO gateway (core package)."""

# The one version source: pyproject.toml reads it (tool.setuptools.dynamic), `idhub --version` prints it.
__version__ = "0.5.0"
