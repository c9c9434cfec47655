"""One module per repository of the PostgreSQL store."""
