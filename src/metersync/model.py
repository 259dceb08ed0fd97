"""Names of the ``meter_reading`` columns the product knows about (spec §2).

The engine reflects the real table at start-up; these names only seed the DDL of a new database,
the synthetic data and the split between upload columns and bookkeeping columns.
"""

from __future__ import annotations

MEASUREMENT_COLUMNS: tuple[str, ...] = (
    "active_energy", "active_energy_export", "apparent_energy", "apparent_energy_export",
    "apparent_power", "apparent_power_phase_a", "apparent_power_phase_b", "apparent_power_phase_c",
    "current", "current_line_a", "current_line_b", "current_line_c", "frequency",
    "maximum_demand_real", "power", "power_factor", "power_factor_phase_a",
    "power_factor_phase_b", "power_factor_phase_c", "power_phase_a", "power_phase_b",
    "power_phase_c", "reactive_energy", "reactive_energy_export", "reactive_power",
    "reactive_power_phase_a", "reactive_power_phase_b", "reactive_power_phase_c", "voltage_a_b",
    "voltage_a_n", "voltage_b_c", "voltage_b_n", "voltage_c_a", "voltage_c_n", "voltage_p_n",
    "voltage_p_p", "voltage_thd", "voltage_thd_phase_a", "voltage_thd_phase_b",
    "voltage_thd_phase_c",
)  # fmt: skip

#: Identity columns sent with every reading, in this order, before the measurements.
KEY_COLUMNS: tuple[str, ...] = ("meter_reading_id", "created_at", "meter_id", "meter_element_id")

#: Columns that are the sync database's own business and are never sent to the Client System.
BOOKKEEPING_COLUMNS: frozenset[str] = frozenset(
    {"tenant_id", "is_synchronized", "sync_status", "retry_count", "last_error", "in_doubt_since"}
)

#: ``in_doubt``: sent to a Client System that is not idempotent, outcome unknown; never resent
#: automatically (``metersync resolve`` releases it).
SYNC_STATUSES: tuple[str, ...] = ("pending", "synchronized", "failed", "in_doubt")
