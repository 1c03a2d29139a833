"""What `collage` prints reaches an operator's terminal: a row's text must not drive it.

Run on a pseudo-terminal, as an operator runs them: an external_id holding an OSC sequence
(which retitles the terminal) or a bidi override must come out escaped, not acted on.
"""

from __future__ import annotations

import os
import pty
import subprocess

import psycopg

from collage.settings import Settings
from tests.support.skus import add_product
from tests.support.workers import collage_command, env_of

HOSTILE = "AB\x1b]2;owned\x07CD\u202eEF"
ESCAPED = "AB\\x1b]2;owned\\x07CD\\u202eEF"


def on_terminal(settings: Settings, *args: str) -> tuple[int, str]:
    """Run `collage ARGS` with a pseudo-terminal as its stdout and stderr; return what it shows."""
    leader, follower = pty.openpty()
    env = {**os.environ, **env_of(settings)}
    done = subprocess.run(
        [*collage_command(), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        timeout=60,
        check=False,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the follower side is closed and drained
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    return done.returncode, shown.decode("utf-8", errors="replace")


def test_rows_reach_the_terminal_escaped(db: psycopg.Connection, settings: Settings) -> None:
    pid = add_product(db, ["s3://x/a.jpg"], brand="zara", external_id=HOSTILE, status="error")
    db.execute(
        "UPDATE raw_products SET error_message = %s WHERE id = %s", [f"broken {HOSTILE}", pid]
    )
    for args in (["show", str(pid)], ["requeue", "--dry-run", "--brand", "zara"]):
        code, shown = on_terminal(settings, *args)
        assert code == 0, shown
        assert "\x1b]" not in shown and "\u202e" not in shown and "\x07" not in shown, shown
        assert ESCAPED in shown, shown
    code, shown = on_terminal(settings, "show", f"zara/{HOSTILE}x")
    assert code == 1 and "\x1b]" not in shown and ESCAPED in shown, shown


def test_a_reference_in_other_digits_is_a_one_line_refusal(settings: Settings) -> None:
    code, shown = on_terminal(settings, "show", "²")
    assert code == 1
    assert "collage: '²' is neither a product id nor BRAND/EXTERNAL_ID" in shown, shown
    assert len(shown.strip().splitlines()) == 1
    assert "int()" not in shown and "Traceback" not in shown
