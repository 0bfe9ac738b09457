"""Policy: the request path to a route, the consent bound to the request, the decision."""
