"""The render worker (``python -m render_service.worker``); see :mod:`render_service.worker.core`.

Kept free of imports so the API can use :mod:`render_service.worker.webhooks` without torch.
"""
