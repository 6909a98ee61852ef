"""How the extender's HTTP server treats connections: options for aiohttp's server.

The request handling lives in `app`; this module decides what the server does before a request
reaches it. Bodies are never decompressed (`app.identity_only` refuses a declared encoding).
"""

from __future__ import annotations

from typing import Any

from extender.settings import Settings


def server_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `web.AppRunner` (and aiohttp's test server) serving the extender."""
    del settings  # the connection limits of the settings join here in the next step
    return {"access_log": None, "auto_decompress": False}
