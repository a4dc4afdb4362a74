"""arq worker: settings and thin job functions over core and connectors."""
