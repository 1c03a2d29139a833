"""Every SQL statement of the package, one module per subject, bound parameters only.

Functions take an open connection and leave the transaction to their caller; none relies on
session state except liveness (its own session) and migrate (the session URL), so all the rest
work through PgBouncer's transaction pool.
"""

from collage.db.connect import Row, connect, connect_async, connect_dicts, ping, pool_options

__all__ = ["Row", "connect", "connect_async", "connect_dicts", "ping", "pool_options"]
