"""What both services share on the HTTP side: settings base, problem-details errors, auth, logging,
strict request parsing, the body limit and offline API docs.

Not part of the contract: this package imports FastAPI/starlette, and no contract module
(canvas, omost_code, layout, prompts, grammar, jobs, queue, plans, contract) may import it.
"""
