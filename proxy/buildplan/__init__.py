"""The build plan contract: which wheels to build and why not the rest (pure, no aiohttp).

Shared by the builder (a local plan) and the proxy (the farm's plan, handed out as jobs).
"""
