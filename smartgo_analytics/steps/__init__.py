"""The plain functions asset bodies call: one module per asset group."""
