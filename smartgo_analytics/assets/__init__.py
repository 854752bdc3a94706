"""One module per asset family."""
