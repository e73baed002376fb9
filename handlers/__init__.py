"""HTTP handlers, one module per OpenAPI tag.

Thin by design: the spec has already validated the request, so a handler
reads its arguments, calls the backend, and shapes the answer. No state,
no libvirt, no error translation (errors are raised and turned into
problem+json by the handlers registered in ``cockpit_api.http.problems``).
"""
