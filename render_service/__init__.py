"""Render service: the job API, the queue worker and the diffusion engine (``render_service.engine``)."""
