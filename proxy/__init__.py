"""pythonbuild's proxy: a caching Simple Repository API server that adds locally built wheels."""

__version__ = "0.1.0"
USER_AGENT = f"pythonbuild/{__version__}"
