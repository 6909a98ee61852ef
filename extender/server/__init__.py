"""The extender service: the wire protocol, the aiohttp application, readiness, metrics, TLS,
and the `serve` command that wires a cluster source (snapshot or live informers) to them."""
