"""The composition root: the `trigger-email` command wires config, core, connectors, the web
app and the worker together. Only this package imports all of them."""
