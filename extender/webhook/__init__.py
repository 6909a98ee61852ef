"""The admission webhook that routes host-port pods to the hostport-aware scheduler, and the
certificates it (and the extender's TLS) can be given without cert-manager."""
