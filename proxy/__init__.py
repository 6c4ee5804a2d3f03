"""pythonbuild's proxy: a caching Simple Repository API server that adds locally built wheels."""

# The one place the version is written: pyproject reads it (dynamic), and every
# request the proxy and the builder send upstream says it.
__version__ = "0.1.0"
USER_AGENT = f"pythonbuild/{__version__}"
