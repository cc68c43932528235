"""What one request's handlers leave for each other in the ASGI scope's `state` (the same dict
as Starlette's `request.state`), by name, in the order a request meets them."""

from __future__ import annotations

# The request's id (RequestContextMiddleware): X-Request-ID when sane, else a new UUID.
REQUEST_ID = "request_id"
# The authentication outcome (AuthenticationMiddleware): a `Principal`, the `ApiException`
# explaining why there is none, or absent when no credentials were sent.
AUTH = "auth"
# How the download URL was made (the route): "minted" for this request, "cached_token" reused.
SIGNING = "b2"
# The error code of an error answer (the error handlers).
ERROR_CODE = "error_code"
