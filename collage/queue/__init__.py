"""The job queue: the Procrastinate app, the build job, the fate of a SKU, the worker around them.

Nothing is imported here: `procrastinate --app=collage.queue.app.app` and `collage worker` load
what they run.
"""
