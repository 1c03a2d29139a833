-- The product and log tables exist already in staging and production: create them only where
-- they are missing (a fresh database, tests, the demo) and never alter what is there.
CREATE TABLE IF NOT EXISTS raw_products (
    id            bigserial PRIMARY KEY,
    external_id   varchar(100) NOT NULL,
    brand         varchar(50)  NOT NULL,
    image_urls    jsonb,
    collage_url   text,
    image_status  varchar(20),
    error_message text,
    updated_at    timestamptz  NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS scraper_logs (
    id               bigserial PRIMARY KEY,
    scraper_name     varchar(100) NOT NULL,
    status           varchar(20)  NOT NULL,
    records_fetched  integer NOT NULL DEFAULT 0,
    records_new      integer NOT NULL DEFAULT 0,
    records_errors   integer NOT NULL DEFAULT 0,
    started_at       timestamptz NOT NULL,
    completed_at     timestamptz,
    duration_seconds double precision
);
