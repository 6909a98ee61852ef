"""The pure core: the port syntax, the port index, pod decoding, reservations and the decisions.

No I/O, no asyncio, no aiohttp, no kubernetes (held by the import contracts in pyproject.toml):
everything here is answerable from data alone, so it is tested exhaustively with tables and
property tests.
"""
