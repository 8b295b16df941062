"""Stage 3, jobs: when a series is complete (completion), which pipelines run on it (routing,
study_jobs), running one job (runner) and the Celery tasks that carry them (tasks).
"""
