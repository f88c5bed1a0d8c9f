"""slotlog: an async, event-sourced booking backend on PostgreSQL."""
