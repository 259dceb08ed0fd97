"""Tools around the product: the demo, the capacity-planning bench, synthetic readings and the
embedded PostgreSQL. The library and the sync engine never import this package."""
