"""tinyforge control plane: a FastAPI service over a job queue in SQL, and workers that run engine
stages as subprocesses (docs/service.md). The service never imports engine internals; it launches
engine commands and reads what they record (docs/engine-contract.md)."""
