-- collage_queue_summary as in 008, with the oldest wait found in one index probe.

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
       (SELECT count(*) FROM raw_products WHERE image_status = 'cancelled') AS skus_cancelled
  FROM procrastinate_jobs j
  LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
 WHERE j.queue_name = 'collage' AND j.status IN ('todo', 'doing', 'failed');
