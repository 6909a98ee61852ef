"""The layering that import-linter cannot see: which modules serve HTTP (aiohttp.web)."""

from __future__ import annotations

import ast
from pathlib import Path

import extender

PACKAGE = Path(extender.__file__).parent
SERVING_PACKAGES = {"server", "webhook"}


def _imports_aiohttp_web(source: str) -> bool:
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "aiohttp"
            and any(alias.name == "web" for alias in node.names)
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiohttp.web"):
            return True
        if isinstance(node, ast.Import) and any(
            alias.name.startswith("aiohttp.web") for alias in node.names
        ):
            return True
    return False


def test_only_the_server_and_the_webhook_import_aiohttp_web() -> None:
    """aiohttp.web (serving) appears only under extender/server and extender/webhook."""
    serving = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if _imports_aiohttp_web(path.read_text())
    }
    assert serving, "the scan found no server module: it is not looking at the package"
    outside = sorted(name for name in serving if name.split("/")[0] not in SERVING_PACKAGES)
    assert outside == []


def test_the_scan_sees_every_form_of_import() -> None:
    """The check recognises `from aiohttp import web`, `import aiohttp.web` and submodules."""
    assert _imports_aiohttp_web("from aiohttp import web")
    assert _imports_aiohttp_web("import aiohttp.web")
    assert _imports_aiohttp_web("from aiohttp.web_request import Request")
    assert not _imports_aiohttp_web("import aiohttp\nfrom aiohttp import ClientSession")
