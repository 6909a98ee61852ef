"""The node agent: reads the kernel's socket tables and publishes what really listens on a node
(plus the optional conntrack flush for UDP owner switches). Runs on every node, apart from the
extender."""
