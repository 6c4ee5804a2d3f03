"""The wheelhouse contract: its layout and manifest, wheel checks, the merge into pages,
and the demand queue. No aiohttp: the builder and the proxy both use it."""
