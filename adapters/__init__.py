"""Providers: each module holds one provider's pipeline-file block and its adapter, behind
the small Protocols of `adapters.base`; `adapters.catalog` lists them (the one registration)."""
