-- collage: no-transaction
-- Rows that name the same collage (same brand and external_id) are found at every build, and
-- `collage show BRAND/EXTERNAL_ID` and collage_sku_jobs look SKUs up this way: without an index
-- each is a sequential scan of raw_products (130 ms at 1,000,000 rows). Built CONCURRENTLY so
-- the downloader's writes are not blocked.
CREATE INDEX CONCURRENTLY IF NOT EXISTS raw_products_brand_external_id_idx
    ON raw_products (brand, external_id);
