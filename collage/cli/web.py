"""`collage web`: the operators' console, served by uvicorn."""

from __future__ import annotations

import logging

import click

from collage.cli.common import load_settings


@click.command("web")
@click.option("--host", help="Address to listen on [WEB_HOST, default 127.0.0.1].")
@click.option("--port", type=click.IntRange(1, 65535), help="Port [WEB_PORT, default 8080].")
def web_command(host: str | None, port: int | None) -> None:
    """Serve the web console: queue, errors, SKUs with previews, latest collages.

    Read-only unless WEB_TOKEN is set; then an operator who gives the token may requeue.
    """
    import uvicorn

    from collage.web.app import create_app

    settings = load_settings()
    app = create_app(settings)
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(_plain)
    # log_config=None: uvicorn's lines go through the logging `collage` configured (JSON).
    uvicorn.run(
        app,
        host=host or settings.web_host,
        port=port or settings.web_port,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )


def _plain(record: logging.LogRecord) -> bool:
    """Drop the copy of the message uvicorn colours for terminals: JSON logs would carry it."""
    record.__dict__.pop("color_message", None)
    return True
