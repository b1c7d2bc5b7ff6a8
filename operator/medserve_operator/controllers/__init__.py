"""One package per kind: thin kopf handlers, named reconcile steps, status serialised in one place, pure renderers."""
