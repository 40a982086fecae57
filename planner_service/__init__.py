"""The planner service: a prompt (and earlier turns) in, an Omost canvas out, planned by an LLM.

``planner_service.app:create_app`` builds the FastAPI app; ``python -m planner_service`` serves it.
"""
