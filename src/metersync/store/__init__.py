"""The sync database: the asyncio adapter (:mod:`.database`), the schema (:mod:`.schema`) and every
SQL statement the product issues (:mod:`.sql`). Only this package speaks SQL."""
