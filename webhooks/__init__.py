"""The HTTP side: one Starlette app with every route, thin over core and connectors."""
