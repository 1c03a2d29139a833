-- Views for operators: `psql -c 'SELECT * FROM collage_queue_summary'` answers "is it working?",
-- collage_sku_jobs answers "what happened to this SKU?". See the README for example queries.

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
               THEN now() - p.updated_at
       END AS waiting_for,
       CASE WHEN j.status = 'doing' THEN now() - ev.started_at END AS running_for
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
  ) o ON true;

CREATE OR REPLACE VIEW collage_queue_summary AS
SELECT count(*) FILTER (WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now()))
           AS waiting,
       count(*) FILTER (WHERE j.status = 'todo' AND j.scheduled_at > now()) AS retry_later,
       count(*) FILTER (WHERE j.status = 'doing') AS running,
       -- 120 s: collage.app.STALLED_WORKER_S, after which the rescue task takes the job back.
       count(*) FILTER (WHERE j.status = 'doing'
                          AND (w.id IS NULL OR w.last_heartbeat < now() - interval '120 seconds'))
           AS stalled,
       count(*) FILTER (WHERE j.status = 'failed') AS failed_jobs,
       (SELECT now() - min(e.at)
          FROM procrastinate_jobs t JOIN procrastinate_events e ON e.job_id = t.id AND e.type = 'deferred'
         WHERE t.status = 'todo' AND (t.scheduled_at IS NULL OR t.scheduled_at <= now())
       ) AS oldest_waiting_for,
       -- 30 s: three missed heartbeats, as `collage health` counts them.
       (SELECT count(*) FROM procrastinate_workers
         WHERE last_heartbeat > now() - interval '30 seconds') AS workers_alive,
       (SELECT count(*) FROM raw_products WHERE image_status = 'uploaded') AS skus_uploaded,
       (SELECT count(*) FROM raw_products WHERE image_status = 'error') AS skus_error,
       (SELECT count(*) FROM collage_outcomes
         WHERE outcome = 'built' AND finished_at > now() - interval '1 hour') AS built_last_hour,
       (SELECT count(*) FROM collage_outcomes
         WHERE outcome = 'error' AND finished_at > now() - interval '1 hour') AS errors_last_hour
  FROM procrastinate_jobs j
  LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
 WHERE j.queue_name = 'collage' AND j.status IN ('todo', 'doing', 'failed');
