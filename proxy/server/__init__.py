"""The proxy server: the aiohttp app, its handlers, caches, downloads and upstream client.
Nothing outside proxy/ imports this package."""
