"""SQL on the queue and the inspection views: what operators, metrics and the console ask.

Synchronous and one statement per call (the console's summary a few at once), through the
transaction pool. queue.py holds what the CLI and metrics ask; console.py what the web
console adds.
"""

from collage.inspection.console import (
    error_groups,
    failed_of_class,
    latest_collages,
    outcomes_of,
    photos_of,
    ping,
    product,
    search_products,
    throughput,
)
from collage.inspection.queue import (
    Row,
    connect,
    find_product,
    heartbeat_age_s,
    history,
    pickup_delay_s,
    recent_failures,
    running,
    stalled,
    summary,
)

__all__ = [
    "Row",
    "connect",
    "error_groups",
    "failed_of_class",
    "find_product",
    "heartbeat_age_s",
    "history",
    "latest_collages",
    "outcomes_of",
    "photos_of",
    "pickup_delay_s",
    "ping",
    "product",
    "recent_failures",
    "running",
    "search_products",
    "stalled",
    "summary",
    "throughput",
]
