-- Every object this project has in the database, as `collage migrate` leaves it today, in one
-- place to read. The migrations (migrations/NNN_*.sql) are how a database gets here and are what
-- runs; this file is what they add up to. tests/integration/test_schema.py builds a database from
-- this file and another from the migrations, and fails when their catalogs differ: a change to
-- the schema goes in a new migration AND here. Procrastinate's own objects come from its
-- schema.sql (procrastinate/sql/); the ledger collage_migrations is the runner's.

-- The downloader's tables, created only where missing (staging and production have them).
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

-- The two columns this project adds to raw_products and owns: which upload of the SKU a build
-- is for (one more at every write that marks it 'uploaded'), and when that upload came.
ALTER TABLE raw_products ADD COLUMN IF NOT EXISTS upload_generation bigint NOT NULL DEFAULT 0;
ALTER TABLE raw_products ADD COLUMN IF NOT EXISTS uploaded_at timestamptz;

-- The project's own tables.

-- One row per finished build attempt (built, error, retry, superseded); pruned after 14 days.
CREATE TABLE IF NOT EXISTS collage_outcomes (
    id          bigserial PRIMARY KEY,
    product_id  bigint NOT NULL,
    job_id      bigint,
    outcome     text NOT NULL CHECK (outcome IN ('built', 'error', 'retry', 'superseded')),
    error_class text,
    message     text,
    photos      integer,
    bytes_out   bigint,
    duration_s  double precision,
    finished_at timestamptz NOT NULL DEFAULT now(),
    quality     smallint  -- below COLLAGE_QUALITY only where COLLAGE_MAX_BYTES asked for it
);

-- How many times the hourly retry has put an errored SKU back (it stops after a few).
CREATE TABLE IF NOT EXISTS collage_retry_rounds (
    product_id    bigint PRIMARY KEY,
    rounds        integer NOT NULL,
    last_retry_at timestamptz NOT NULL DEFAULT now()
);

-- How far the current build of each SKU got, and how often a worker died building this upload.
CREATE TABLE IF NOT EXISTS collage_progress (
    product_id bigint PRIMARY KEY,
    generation bigint NOT NULL,
    step       text NOT NULL,
    deaths     integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Cancelled builds: the upload whose build an operator cancelled (a new upload ends it).
CREATE TABLE IF NOT EXISTS collage_cancellations (
    product_id   bigint PRIMARY KEY,
    generation   bigint NOT NULL,
    cancelled_at timestamptz NOT NULL DEFAULT now(),
    cancelled_by text NOT NULL
);

-- The pauses in force: '*' for every brand, else one brand.
CREATE TABLE IF NOT EXISTS collage_pauses (
    scope     text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now(),
    paused_by text NOT NULL,
    reason    text
);

-- Functions. Each runs with a pinned search_path (see the end of this section).

-- Whether a brand's builds are paused.
CREATE OR REPLACE FUNCTION collage_paused(brand text) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (SELECT 1 FROM collage_pauses WHERE scope IN ('*', brand))
$$;

-- A brand's next fair-share tag (a job's priority is minus its tag).
CREATE OR REPLACE FUNCTION collage_next_tag(brand text) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    setting text := 'collage.tag_' || md5(coalesce(brand, ''));
    last text := current_setting(setting, true);
    head bigint;
    tail bigint;
    tag bigint;
BEGIN
    IF last IS NOT NULL AND last <> '' THEN
        tag := last::bigint + 1;
    ELSE
        SELECT -max(j.priority) INTO head FROM procrastinate_jobs j
         WHERE j.status = 'todo' AND j.task_name = 'collage.build' AND j.priority <= 0
           AND (j.scheduled_at IS NULL OR j.scheduled_at <= now());
        SELECT -min(j.priority) INTO tail FROM procrastinate_jobs j
         WHERE j.status = 'todo' AND j.task_name = 'collage.build'
           AND j.args ->> 'brand' = brand;
        tag := greatest(coalesce(head, 0), coalesce(tail + 1, 0));
    END IF;
    PERFORM set_config(setting, tag::text, true);
    RETURN tag;
END;
$$;

-- Queue a build of the SKU's current generation (or of `generation`): at most one waits per SKU.
CREATE OR REPLACE FUNCTION collage_enqueue(
    product_id bigint,
    attempt integer DEFAULT 0,
    run_after interval DEFAULT NULL,
    generation bigint DEFAULT NULL,
    brand text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    job_id bigint;
    lock_name text := 'product:' || product_id;
    wanted bigint := generation;
    owner text := brand;
    due timestamptz;
BEGIN
    IF wanted IS NULL OR owner IS NULL THEN
        SELECT coalesce(wanted, p.upload_generation), coalesce(owner, p.brand)
          INTO wanted, owner FROM raw_products p WHERE p.id = product_id;
    END IF;
    due := CASE
        WHEN collage_paused(owner) THEN 'infinity'::timestamptz
        WHEN run_after IS NOT NULL THEN now() + run_after
    END;
    INSERT INTO procrastinate_jobs AS j
        (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at)
    VALUES (
        'collage', 'collage.build', -least(collage_next_tag(owner), 2000000000), lock_name,
        lock_name,
        jsonb_build_object(
            'product_id', product_id, 'attempt', attempt, 'generation', wanted, 'brand', owner
        ),
        due
    )
    ON CONFLICT (queueing_lock) WHERE status = 'todo'
    DO UPDATE SET scheduled_at = EXCLUDED.scheduled_at, args = EXCLUDED.args
        WHERE coalesce((EXCLUDED.args ->> 'generation')::bigint, 0)
                  > coalesce((j.args ->> 'generation')::bigint, -1)
           OR (coalesce((EXCLUDED.args ->> 'generation')::bigint, 0)
                  = coalesce((j.args ->> 'generation')::bigint, -1)
               AND j.scheduled_at IS NOT NULL
               AND (EXCLUDED.scheduled_at IS NULL OR EXCLUDED.scheduled_at < j.scheduled_at))
    RETURNING id INTO job_id;
    RETURN job_id;
END;
$$;

-- A new upload (BEFORE the row is written): count the generation, stamp it.
CREATE OR REPLACE FUNCTION collage_new_upload() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.upload_generation IS DISTINCT FROM OLD.upload_generation THEN
        RETURN NEW;  -- counted already by the other trigger of this statement
    END IF;
    NEW.upload_generation := CASE WHEN TG_OP = 'UPDATE' THEN OLD.upload_generation + 1 ELSE 1 END;
    NEW.uploaded_at := now();
    RETURN NEW;
END;
$$;

-- A new upload written (AFTER): its retry rounds start afresh (the hourly retry marks its own
-- transaction with collage.hourly_retry and keeps the count), a cancellation of an older upload
-- ends, and its build is queued.
CREATE OR REPLACE FUNCTION collage_queue_upload() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
BEGIN
    IF current_setting('collage.hourly_retry', true) IS DISTINCT FROM 'on' THEN
        DELETE FROM collage_retry_rounds WHERE product_id = NEW.id;
    END IF;
    DELETE FROM collage_cancellations WHERE product_id = NEW.id;
    PERFORM collage_enqueue(NEW.id, 0, NULL, NEW.upload_generation, NEW.brand);
    RETURN NULL;
END;
$$;

DO $$
DECLARE
    path text := format('pg_catalog, %I, pg_temp', current_schema());
BEGIN
    EXECUTE format('ALTER FUNCTION collage_enqueue(bigint, integer, interval, bigint, text) SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION collage_new_upload() SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION collage_queue_upload() SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION collage_next_tag(text) SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION collage_paused(text) SET search_path = %s', path);
END;
$$;

-- The triggers on raw_products: BEFORE, count and stamp the upload; AFTER (only for rows written),
-- queue its build in the writer's own transaction.
CREATE TRIGGER raw_products_upload_inserted
    BEFORE INSERT ON raw_products
    FOR EACH ROW WHEN (NEW.image_status = 'uploaded')
    EXECUTE FUNCTION collage_new_upload();

-- Fires whenever the statement sets image_status, even to the value it had.
CREATE TRIGGER raw_products_upload_status
    BEFORE UPDATE OF image_status ON raw_products
    FOR EACH ROW WHEN (NEW.image_status = 'uploaded')
    EXECUTE FUNCTION collage_new_upload();

-- New photos on a SKU that is still 'uploaded' (runs after _status: triggers go by name).
CREATE TRIGGER raw_products_upload_urls
    BEFORE UPDATE OF image_urls ON raw_products
    FOR EACH ROW WHEN (NEW.image_status = 'uploaded' AND OLD.image_urls IS DISTINCT FROM NEW.image_urls)
    EXECUTE FUNCTION collage_new_upload();

CREATE TRIGGER raw_products_upload_queued
    AFTER INSERT ON raw_products
    FOR EACH ROW WHEN (NEW.image_status = 'uploaded')
    EXECUTE FUNCTION collage_queue_upload();

CREATE TRIGGER raw_products_upload_requeued
    AFTER UPDATE ON raw_products
    FOR EACH ROW WHEN (NEW.image_status = 'uploaded'
                       AND NEW.upload_generation IS DISTINCT FROM OLD.upload_generation)
    EXECUTE FUNCTION collage_queue_upload();

-- Views for operators (see the README: Inspect with SQL).
CREATE OR REPLACE VIEW collage_sku_jobs AS
SELECT p.id AS product_id,
       p.brand,
       p.external_id,
       p.image_status,
       p.error_message,
       p.collage_url,
       p.updated_at,
       CASE WHEN jsonb_typeof(p.image_urls) = 'array' THEN jsonb_array_length(p.image_urls) END
           AS photos,
       j.id AS job_id,
       j.status::text AS job_status,
       (j.args ->> 'attempt')::int AS attempt,
       (SELECT count(*) FROM procrastinate_jobs a WHERE a.lock = 'product:' || p.id) AS jobs_total,
       ev.queued_at,
       j.scheduled_at AS retry_at,
       ev.started_at,
       ev.finished_at,
       o.message AS last_error,
       CASE
           WHEN j.status = 'todo' THEN now() - greatest(ev.queued_at, j.scheduled_at)
           WHEN j.status IS DISTINCT FROM 'doing' AND p.image_status = 'uploaded'
                AND c.product_id IS NULL
               THEN now() - p.updated_at
       END AS waiting_for,
       CASE WHEN j.status = 'doing' THEN now() - ev.started_at END AS running_for,
       c.cancelled_at,
       c.cancelled_by
  FROM raw_products p
  LEFT JOIN LATERAL (
        SELECT * FROM procrastinate_jobs j
         WHERE j.lock = 'product:' || p.id ORDER BY j.id DESC LIMIT 1
  ) j ON true
  LEFT JOIN LATERAL (
        SELECT min(e.at) FILTER (WHERE e.type = 'deferred') AS queued_at,
               max(e.at) FILTER (WHERE e.type = 'started') AS started_at,
               max(e.at) FILTER (WHERE e.type IN ('succeeded', 'failed', 'aborted', 'cancelled'))
                   AS finished_at
          FROM procrastinate_events e WHERE e.job_id = j.id
  ) ev ON true
  LEFT JOIN LATERAL (
        SELECT o.message FROM collage_outcomes o
         WHERE o.product_id = p.id AND o.outcome IN ('error', 'retry')
         ORDER BY o.id DESC LIMIT 1
  ) o ON true
  LEFT JOIN collage_cancellations c
    ON c.product_id = p.id AND c.generation = p.upload_generation AND p.image_status = 'uploaded';

CREATE OR REPLACE VIEW collage_queue_summary AS
SELECT count(*) FILTER (WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now()))
           AS waiting,
       count(*) FILTER (WHERE j.status = 'todo' AND j.scheduled_at > now()
                          AND j.scheduled_at <> 'infinity') AS retry_later,
       count(*) FILTER (WHERE j.status = 'doing') AS running,
       -- 120 s: collage.constants.STALLED_WORKER_S, the longest a silent worker keeps its jobs.
       count(*) FILTER (WHERE j.status = 'doing'
                          AND (w.id IS NULL OR w.last_heartbeat < now() - interval '120 seconds'))
           AS stalled,
       count(*) FILTER (WHERE j.status = 'failed') AS failed_jobs,
       -- The oldest due job is the one with the smallest id (ids grow as jobs are queued):
       -- one index probe, where min() over every waiting job's events took 70-100 ms at 100,000.
       (SELECT now() - e.at
          FROM procrastinate_jobs t JOIN procrastinate_events e ON e.job_id = t.id AND e.type = 'deferred'
         WHERE t.status = 'todo' AND (t.scheduled_at IS NULL OR t.scheduled_at <= now())
         ORDER BY t.id LIMIT 1
       ) AS oldest_waiting_for,
       -- 30 s: three missed heartbeats, as `collage health` counts them.
       (SELECT count(*) FROM procrastinate_workers
         WHERE last_heartbeat > now() - interval '30 seconds') AS workers_alive,
       (SELECT count(*) FROM raw_products WHERE image_status = 'uploaded') AS skus_uploaded,
       (SELECT count(*) FROM raw_products WHERE image_status = 'error') AS skus_error,
       (SELECT count(*) FROM collage_outcomes
         WHERE outcome = 'built' AND finished_at > now() - interval '1 hour') AS built_last_hour,
       (SELECT count(*) FROM collage_outcomes
         WHERE outcome = 'error' AND finished_at > now() - interval '1 hour') AS errors_last_hour,
       count(*) FILTER (WHERE j.status = 'todo' AND j.scheduled_at = 'infinity') AS paused,
       (SELECT coalesce(array_agg(scope ORDER BY scope), '{}') FROM collage_pauses) AS paused_scopes,
       (SELECT count(*) FROM collage_cancellations c
          JOIN raw_products p ON p.id = c.product_id AND p.upload_generation = c.generation
         WHERE p.image_status = 'uploaded') AS skus_cancelled,
       (SELECT count(*) FROM raw_products p
         WHERE p.image_status = 'uploaded'
           AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs q
                            WHERE q.lock = 'product:' || p.id AND q.status IN ('todo', 'doing'))
           AND NOT EXISTS (SELECT 1 FROM collage_cancellations c
                            WHERE c.product_id = p.id AND c.generation = p.upload_generation))
           AS skus_unqueued
  FROM procrastinate_jobs j
  LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
 WHERE j.queue_name = 'collage' AND j.status IN ('todo', 'doing', 'failed');

-- Indexes. The migrations build those on staging's tables CONCURRENTLY.
CREATE INDEX IF NOT EXISTS collage_outcomes_finished_idx ON collage_outcomes (finished_at);
CREATE INDEX IF NOT EXISTS collage_outcomes_product_idx ON collage_outcomes (product_id, finished_at);
CREATE INDEX IF NOT EXISTS collage_outcomes_job_idx ON collage_outcomes (job_id, id);
CREATE INDEX IF NOT EXISTS raw_products_image_status_updated_idx
    ON raw_products (image_status, updated_at) WHERE image_status IN ('uploaded', 'error');
CREATE INDEX IF NOT EXISTS raw_products_brand_external_id_idx ON raw_products (brand, external_id);
CREATE INDEX IF NOT EXISTS raw_products_external_id_idx ON raw_products (external_id);
CREATE INDEX IF NOT EXISTS scraper_logs_name_started_idx ON scraper_logs (scraper_name, started_at DESC);
CREATE INDEX IF NOT EXISTS collage_jobs_lock_idx ON procrastinate_jobs (lock, id DESC);
CREATE INDEX IF NOT EXISTS collage_jobs_active_idx
    ON procrastinate_jobs (queue_name, status) INCLUDE (scheduled_at, worker_id)
    WHERE status IN ('todo', 'doing', 'failed');
CREATE INDEX IF NOT EXISTS collage_jobs_retry_later_idx
    ON procrastinate_jobs (scheduled_at)
    WHERE status = 'todo' AND scheduled_at IS NOT NULL AND scheduled_at <> 'infinity';
