"""pythonbuild's proxy: a caching Simple Repository API server that adds locally built wheels."""
