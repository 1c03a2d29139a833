-- How far the current build of each SKU got, and how many times a worker died building this
-- upload of it: a SKU whose build keeps killing its worker (an OOM kill, a crash the child
-- process could not contain) is marked 'error' after a few deaths instead of being rescued
-- forever, and the message says where the builds were when they died. One row per SKU being
-- built; removed when its result is recorded.
CREATE TABLE IF NOT EXISTS collage_progress (
    product_id bigint PRIMARY KEY,
    generation bigint NOT NULL,
    step       text NOT NULL,
    deaths     integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
