"""Benchmark harness: synthetic clusters, a null extender baseline, an HTTP driver and reports.

Scripts, not a library: nothing under extender/ may import from here. Run with `make bench` or
`make bench-quick`; `python -m bench --help` lists the knobs.
"""
