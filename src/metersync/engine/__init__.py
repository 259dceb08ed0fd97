"""The sync engine: upload and download cycles, the tenant cache and the orchestrator.

It knows the order of things (fetch, encode, send, mark; page, validate, insert, advance the
cursor) and calls :mod:`metersync.store`, :mod:`metersync.remote` and :mod:`metersync.codec` for
their insides."""
