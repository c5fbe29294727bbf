"""Published numbers as data, with provenance."""
