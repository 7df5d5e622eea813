"""HTTP API: thin routers over service.services; versioned under /v1."""
