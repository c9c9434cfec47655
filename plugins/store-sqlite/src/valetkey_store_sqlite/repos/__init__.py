"""The store's repositories, one module per record type; each wraps the shared ``Database``."""
