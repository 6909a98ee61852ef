"""Operator tools: `audit`, `check` and `who` over a cluster's port claims.

The pure views (`audit`, `check`, `who`, `views`) read a `Cluster` (and, for `check`, the raw
Node objects' labels and taints); `render` turns them into tables, JSON or YAML; `source` loads
the objects (snapshot files or a live cluster); `commands` is the argparse face. Nothing here
writes to the cluster or the index.
"""
