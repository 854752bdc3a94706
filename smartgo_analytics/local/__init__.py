"""The embedded local stack and its demo data: everything `make demo` needs, no cloud account."""
