-- collage: no-transaction
-- Cancelled SKUs are rows of collage_cancellations now (012): no row of raw_products is
-- 'cancelled' any more, and 009's partial index for them serves nothing. Dropped CONCURRENTLY:
-- the downloader's writes do not wait.
DROP INDEX CONCURRENTLY IF EXISTS raw_products_cancelled_updated_idx;
