"""``valetkey serve``: one ASGI app composed from the plugins' routes and MCP tools, plus their
background services, on 127.0.0.1:8760 by default."""
