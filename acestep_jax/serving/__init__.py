"""Serving many requests: job files and the HTTP server, sharing one batching scheme.

Modules: :mod:`.requests` (the request formats, one table mapping the reference's names,
validation and operator limits), :mod:`.batching` (the grouping key, batch sizes with
fillers, running a batch), :mod:`.jobs_file` (``sample.py --jobs``), :mod:`.scheduler`
(the server's queue and batching worker), :mod:`.journal` (durable job states),
:mod:`.metrics` (Prometheus text), :mod:`.app` (the FastAPI app), :mod:`.loading`
(the resident models).
"""
