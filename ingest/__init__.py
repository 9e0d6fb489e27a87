"""Ingest: map a customer's exports onto the canonical tables, check them against the contracts, load them atomically."""
