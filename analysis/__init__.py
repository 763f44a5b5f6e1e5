"""Results: the DuckDB catalog (one schema module), ingest, stable scores, fits, figures, report.
Never imports torch."""
