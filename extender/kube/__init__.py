"""Where Kubernetes objects come from: the API server (credentials, a raw aiohttp client, the
informer) or kubectl dumps. The only package that imports `kubernetes` (and only in kubeauth)."""
