# syntax=docker/dockerfile:1
# galaxypaint: the prediction service in a slim image; an optional stage trains models into it.
#   docker build -t galaxypaint .                                   # service only (serving extra)
#   docker build --build-arg REGISTRY_DIR=models -t galaxypaint .   # bake a registry directory in
#   docker build --target trainer -t galaxypaint-train .            # image with the train extra
# CI builds the runtime target without a Docker engine and serves it: docker/test-image.sh.

ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS builder
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY app ./app
COPY training ./training
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt .

FROM builder AS trainer
RUN /opt/venv/bin/pip install --no-cache-dir -c constraints.txt ".[train]"
COPY docker/entrypoint.sh /usr/local/bin/galaxypaint-entrypoint
RUN useradd --create-home --uid 10001 galaxypaint && mkdir -p /srv/galaxypaint/models /srv/galaxypaint/data \
    && chown -R galaxypaint /srv/galaxypaint
USER 10001
ENV PATH=/opt/venv/bin:$PATH
ENTRYPOINT ["galaxypaint-entrypoint"]
CMD ["train"]

# What a serving process never loads (measured with a live server's /proc/PID/maps after predictions,
# a paint job and a P(k) job): the packages' own test suites, pyarrow's C++ headers and its optional
# Flight RPC and S3 parts (pyarrow imports them on demand): 988 -> 826 MB.  Only the runtime copies this
# stage; the trainer keeps the full install.
FROM builder AS slim
RUN for sp in /opt/venv/lib/python*/site-packages; do \
      find "$sp" -depth -type d -name tests -exec rm -rf {} + \
      && rm -rf "$sp/pyarrow/include" "$sp/pyarrow/src" "$sp"/pyarrow/*flight* "$sp"/pyarrow/*_s3*; \
    done

FROM python:${PYTHON}-slim AS runtime
ARG REGISTRY_DIR=""
LABEL org.opencontainers.image.title="galaxypaint" \
      org.opencontainers.image.description="Halo-galaxy connection models (de Santi et al. 2022) served over HTTP"
COPY --from=slim /opt/venv /opt/venv
COPY docker/entrypoint.sh /usr/local/bin/galaxypaint-entrypoint
RUN useradd --create-home --uid 10001 galaxypaint && mkdir -p /srv/galaxypaint/models /srv/galaxypaint/data \
    && chown -R galaxypaint /srv/galaxypaint
# an optional registry (SQLite + ONNX) baked in for offline collaborators; the build context must hold it
COPY --chown=10001 ${REGISTRY_DIR:-docker}/ /tmp/baked/
RUN if [ -f /tmp/baked/registry.sqlite ]; then cp -r /tmp/baked/. /srv/galaxypaint/models/; fi && rm -rf /tmp/baked
ENV PATH=/opt/venv/bin:$PATH \
    GALAXYPAINT_REGISTRY=/srv/galaxypaint/models \
    GALAXYPAINT_DATA_DIR=/srv/galaxypaint/data \
    GALAXYPAINT_HOST=0.0.0.0 \
    GALAXYPAINT_PORT=8000 \
    PYTHONUNBUFFERED=1
USER 10001
VOLUME ["/srv/galaxypaint/models", "/srv/galaxypaint/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=6s --start-period=30s --retries=3 CMD ["galaxypaint-entrypoint", "healthcheck"]
ENTRYPOINT ["galaxypaint-entrypoint"]
CMD ["serve"]
