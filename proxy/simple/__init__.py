"""The Simple Repository API contract: the page model, PEP 691/503 parsers and renderers,
media types and project names. No aiohttp and no I/O, so the builder can use it."""
