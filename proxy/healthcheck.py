"""`python -m proxy.healthcheck --config PATH`: exit 0 when the proxy that config describes
answers /health, 1 (with one line saying why) when it does not.

For container health checks (the Dockerfile's HEALTHCHECK) and service monitors: slim images
have no curl, and this asks the address and port the config gives rather than a fixed one.
Standard library only, so it starts quickly every interval; no aiohttp.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from proxy.cli import ArgumentParser
from proxy.config import ConfigError, load_config

# Listening on every address: ask over loopback, which every such socket also answers.
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def health_url(host: str, port: int) -> str:
    host = _ANY.get(host, host)
    return f"http://[{host}]:{port}/health" if ":" in host else f"http://{host}:{port}/health"


def check(url: str, timeout: float) -> str | None:
    """None when `url` answers 200 with status "ok"; else why not, one line."""
    # No proxy: HTTP(S)_PROXY in the environment is for upstream, not for asking ourselves.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            body = json.loads(response.read(64 * 1024))
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{url}: {getattr(exc, 'reason', None) or exc}"
    if not isinstance(body, dict) or body.get("status") != "ok":
        return f"{url}: status is not ok"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m proxy.healthcheck", description=__doc__)
    parser.add_argument("--config", required=True, type=Path, help="path to config.ini")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 2
    why = check(health_url(config.proxy.host, config.proxy.port), args.timeout)
    if why is not None:
        print(f"unhealthy: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
