"""The services layer: what the API routers, the CLI and the workers call. Routers stay thin."""
