"""The native REST API (CONTRACT section 3): routers, request schemas and the JSON codec."""
