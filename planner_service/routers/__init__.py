"""One router per resource: plans, generations, and the operational endpoints."""
