"""The API's routes, one module per domain; app.py mounts them."""
