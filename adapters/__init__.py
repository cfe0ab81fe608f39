"""Providers behind small Protocols (see `adapters.base`), looked up by name in the registry."""
