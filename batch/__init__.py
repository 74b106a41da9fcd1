"""Batch jobs: Celery on Redis, the jobs API and the CloudEvents ingress."""
