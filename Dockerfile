# syntax=docker/dockerfile:1
# hostport-extender: one image for the extender (`serve`), the routing webhook (`webhook`), the
# certificate helper (`certs`) and the node agent (`agent`).
#   docker build -t hostport-extender:0.1.0 .
#   make image        (podman; builds the same base from Debian packages when it cannot pull it)
# Everything installs from wheels (--only-binary), so neither stage needs a compiler, and the
# versions are the ones `make test` ran with (constraints.txt).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Unset by default (pip uses the package index). `make image` sets them to install from a
# wheelhouse it downloaded on the host and mounts read-only, so the build needs no network.
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY extender ./extender
COPY config/samples ./config/samples
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/hostport-extender \
 && /opt/hostport-extender/bin/pip install --only-binary=:all: -c constraints.txt /wheels/*.whl \
 && /opt/hostport-extender/bin/pip uninstall --yes pip \
 && python -m compileall -q /opt/hostport-extender

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="hostport-extender" \
      org.opencontainers.image.description="kube-scheduler extender that keeps pods off nodes where host ports collide" \
      org.opencontainers.image.licenses="Apache-2.0"
# Bytecode was compiled in the build stage: nothing is written at run time, so the container
# runs with readOnlyRootFilesystem: true.
ENV PATH=/opt/hostport-extender/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/hostport-extender /opt/hostport-extender
# The sample cluster, so that `serve --snapshot config/samples/cluster.yaml` (and the curl it
# prints) works in the image as in a checkout.
COPY --from=build /src/config/samples /usr/share/hostport-extender/config/samples
WORKDIR /usr/share/hostport-extender
# 65532: the conventional "nonroot" uid; no home, no shell needed.
USER 65532:65532
# 8888 extender verbs (loopback), 9090 health/readiness/metrics, 8443 webhook (HTTPS).
EXPOSE 8888 9090 8443
ENTRYPOINT ["hostport-extender"]
CMD ["--help"]
