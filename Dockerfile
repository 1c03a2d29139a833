# collage worker image: Python 3.12 on Debian 12 (bookworm), slim.
#
#   docker build -t collage-worker .
#   docker build --build-arg EXTRA_CA_CERTS="$(cat /usr/local/share/ca-certificates/*.crt)" ...
#
# PYTHON_IMAGE  the base, default the pinned official image (any Debian-based Python >= 3.11 with
#               venv works: bin/setup-docker builds a stand-in where no registry answers).
# EXTRA_CA_CERTS  PEM text of CA certificates pip must trust, for builds behind a TLS-intercepting
#               proxy. Only the dependency stage sees it: the final image has neither the
#               certificates nor the argument in its history.
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

# --- dependencies: the only stage that downloads -------------------------------------------
FROM ${PYTHON_IMAGE} AS deps
ARG EXTRA_CA_CERTS=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what decides the dependencies: code and README edits do not reinstall them. setup.cfg's
# requirements are installed at the pins of constraints.txt, without building the package, and
# the build tools are kept as wheels so that the package's own build needs no network.
COPY pyproject.toml setup.cfg constraints.txt ./
RUN set -eu; \
    if [ -n "$EXTRA_CA_CERTS" ]; then \
      { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "$EXTRA_CA_CERTS"; } >/tmp/ca.pem; \
      export PIP_CERT=/tmp/ca.pem; \
    fi; \
    python -c 'import configparser as c; p = c.ConfigParser(); p.read("setup.cfg"); \
print(p["options"]["install_requires"])' >requirements.txt; \
    python -m venv /opt/collage; \
    /opt/collage/bin/pip install -q -c constraints.txt -r requirements.txt; \
    /opt/collage/bin/pip download -q -d /wheelhouse -c constraints.txt 'setuptools>=69' wheel; \
    rm -f /tmp/ca.pem

# --- the package, built offline from the cached build tools ----------------------------------
FROM deps AS wheel
COPY collage ./collage
COPY migrations ./migrations
RUN /opt/collage/bin/pip wheel -q --no-deps --no-index --find-links /wheelhouse -w /dist .

# --- the image --------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/collage/bin:$PATH \
    LOG_FORMAT=json \
    PILLOW_BLOCKS_MAX=32 \
    TEMP_DIR=/tmp/collage \
    TMPDIR=/tmp/collage
# The one writable place: with `--read-only`, mount a tmpfs here (compose.yml does). TMPDIR too,
# since Python's tempfile refuses to start without a writable folder.
RUN groupadd --gid 10001 collage \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin collage \
    && install -d -o collage -g collage /tmp/collage
COPY --from=deps /opt/collage /opt/collage
# A code-only change rebuilds from here: two layers of a few hundred kB.
COPY --from=wheel /dist /tmp/dist
RUN /opt/collage/bin/pip install -q --no-deps --no-index --no-cache-dir \
        --disable-pip-version-check /tmp/dist/*.whl \
    && rm -rf /tmp/dist

USER collage
# Exec form: the worker is PID 1, so SIGTERM from `docker stop` reaches it directly; it lets
# running builds finish for 60 s (--graceful-timeout, collage.constants.GRACEFUL_TIMEOUT_S), an
# upload in flight gets 30 s more, and it exits (collage.constants.DRAIN_S, 100 s at most).
# Give `docker stop` longer than that: compose's stop_grace_period is 110 s; with plain
# `docker run`, pass --stop-timeout 110 (Docker's default is 10 s, then SIGKILL).
ENTRYPOINT ["collage"]
CMD ["worker"]

HEALTHCHECK --interval=30s --timeout=20s --start-period=30s --retries=3 \
    CMD ["collage", "health"]
