"""HTTP and WebSocket routes, one module per resource; assembled in app/api/main.py."""
