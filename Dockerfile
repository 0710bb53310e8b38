# idhub: a multi-stage image. The build stage compiles lxml and xmlsec against Debian's libxml2/xmlsec1 (the two
# must share one libxml2, which binary wheels do not guarantee); the runtime stage has no compiler and runs as an
# unprivileged user. See docs/production.md and deploy/compose.yaml.
#
#   docker build -t idhub .
#   docker run --env-file deploy/idhub.env.example -p 8000:8000 idhub
#
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc pkg-config libxml2-dev libxslt1-dev libxmlsec1-dev libxmlsec1-openssl \
 && rm -rf /var/lib/apt/lists/*
# idhub runs from its source tree (its templates live beside the packages): installed in place, at the path the
# runtime stage copies it to.
WORKDIR /opt/idhub/src
COPY . .
RUN python -m venv /opt/idhub/venv \
 && /opt/idhub/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/idhub/venv/bin/pip install --no-cache-dir --no-binary lxml,xmlsec -e . \
 && /opt/idhub/venv/bin/python -m compileall -q /opt/idhub/src

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libxml2 libxslt1.1 libxmlsec1 libxmlsec1-openssl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/idhub --create-home --shell /usr/sbin/nologin idhub
COPY --from=build /opt/idhub /opt/idhub
ENV PATH=/opt/idhub/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IDHUB_OUTBOX_DIR=/var/lib/idhub/outbox
USER idhub
WORKDIR /var/lib/idhub
EXPOSE 8000
# /readyz answers 503 while the database or Redis cannot be reached: the container is then unhealthy and the proxy
# stops sending it traffic. (No curl in the image: the venv's Python asks.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"]
CMD ["idhub", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--threads", "4"]
