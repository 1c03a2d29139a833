"""Whether S3 takes this worker's requests at all: when it refuses every one, builds wait.

A refused clock, key or policy is the worker's problem, not the SKU's: burning every SKU's
attempts on it would mark the whole queue 'error' in seconds. The gate shuts when a build was
refused and a ping of the bucket is refused too; builds are then held back untried, and the
worker's beat pings again until S3 answers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from collage.errors import S3Refused, one_line
from collage.storage import Bucket

logger = logging.getLogger(__name__)

# A held-back build is tried again this long after (the beat reopens the gate sooner or later).
HOLD_S = 30.0


@dataclass
class Gate:
    """Shut while S3 refuses everything this worker sends it; says why, and since when."""

    refused: str | None = None
    since: float | None = None
    held: set[int] = field(default_factory=set)  # SKUs held back, to release when S3 answers

    @property
    def shut(self) -> bool:
        """Whether builds are held back now."""
        return self.refused is not None

    def why(self) -> str | None:
        """One line for the logs and `collage health`, or None while builds run."""
        if self.refused is None or self.since is None:
            return None
        held_s = time.monotonic() - self.since
        return f"builds held back for {held_s:.0f}s: {self.refused}"

    def after_refusal(self, bucket: Bucket, refusal: S3Refused) -> None:
        """Shut the gate if the whole bucket refuses too, not just one object (blocking)."""
        if self.shut:
            return
        try:
            bucket.ping()
        except S3Refused as exc:
            self.refused, self.since = refusal.message, time.monotonic()
            logger.error(
                "S3 refuses every request; builds are held back until it answers",
                extra={"action": "s3_gate", "error": self.refused, "ping": one_line(exc)},
            )
        except Exception:  # S3 away altogether: the builds' own retries cover that
            return

    def take_held(self) -> list[int]:
        """The SKUs held back while the gate was shut, to queue at once now that it is open."""
        held, self.held = sorted(self.held), set()
        return held

    def probe(self, bucket: Bucket) -> None:
        """Open the gate once the bucket answers again (blocking; the worker's beat calls it)."""
        if not self.shut:
            return
        try:
            bucket.ping()
        except Exception:
            return
        held_s = time.monotonic() - (self.since or time.monotonic())
        self.refused, self.since = None, None
        logger.warning(
            "S3 answers again; builds resume",
            extra={"action": "s3_gate", "held_s": round(held_s, 1)},
        )
