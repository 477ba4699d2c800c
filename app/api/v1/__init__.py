"""The native REST API (docs/API.md): routers, request schemas and the JSON codec."""
