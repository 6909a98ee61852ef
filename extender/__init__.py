"""hostport-extender: a kube-scheduler HTTP extender that prevents host-port collisions."""

__version__ = "0.1.0"
