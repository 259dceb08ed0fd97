"""The Client System as seen from the site: the HTTP client (:mod:`.client`) and the parsing and
validation of download pages (:mod:`.page`). Only this package speaks HTTP to the Client System."""
