"""HTTP endpoints, one module per area; service/app.py wires them."""
