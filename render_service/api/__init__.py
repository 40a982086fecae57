"""HTTP routers of the render service, one module per resource."""
