"""The study: spec parsing and validation, DAG planning with content hashes, launch backends,
status and reconciliation, adaptive search, and the `vlmsweep` command line."""
