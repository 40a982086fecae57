"""The OpenAI-compatible Images API (``POST /v1/images/generations``, ``GET /v1/models``), split as
vLLM splits an endpoint: :mod:`.protocol` (OpenAI's request, answer and error models), :mod:`.serving`
(what a request does: plan, queue, wait, read the images), :mod:`.errors` (the one mapping of every
failure to OpenAI's error shape) and the HTTP binding, ``planner_service.routers.images``."""
