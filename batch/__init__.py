"""Batch jobs (Celery on Redis, CloudEvents ingress). Not built yet: see issue 3."""
