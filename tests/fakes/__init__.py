"""In-process fakes of the services the app talks to, written to their documented contracts."""
