# collage worker image: Python 3.12 on Debian 12 (bookworm), slim.
FROM python:3.12.8-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LOG_FORMAT=json \
    PILLOW_BLOCKS_MAX=32

WORKDIR /app

# Dependencies first, from the exact pins, in their own layer: code changes do not reinstall them.
# The placeholder package lets pip resolve setup.cfg's requirements before the code is copied.
COPY pyproject.toml setup.cfg constraints.txt README.md ./
RUN mkdir collage && touch collage/__init__.py \
    && pip install -c constraints.txt . \
    && pip uninstall -y collage && rm -rf collage build *.egg-info

COPY collage ./collage
COPY migrations ./migrations
# Editable, so that `collage migrate` finds /app/migrations next to the package.
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin collage \
    && mkdir -p /tmp/collage && chown collage /tmp/collage

USER collage
ENV TEMP_DIR=/tmp/collage

# Exec form: the worker is PID 1, so SIGTERM from `docker stop` reaches it directly;
# it drains running jobs (--graceful-timeout) and exits. compose's stop_grace_period is longer.
ENTRYPOINT ["collage"]
CMD ["worker", "--graceful-timeout", "60"]

HEALTHCHECK --interval=30s --timeout=20s --start-period=30s --retries=3 \
    CMD ["collage", "health"]
