"""The tools as a service over HTTP: one ASGI app (``app.py``), run with uvicorn on one box
(``serve.py``: ``assistant serve-tools``) or as the ingress of Ray Serve deployments, one per
model, on a cluster (``ray_serve.py``: ``serve run deploy/serve.yaml``). The client is
``tools/remote.py``."""
