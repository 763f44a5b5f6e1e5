"""The Streamlit result browser: thin pages over `analysis/`, read-only."""
