from service.db.session import Database  # noqa: F401
