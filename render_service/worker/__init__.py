"""The render worker (``python -m render_service.worker``); see :mod:`render_service.worker.core`."""
