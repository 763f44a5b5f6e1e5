"""Shared pytest fixtures; the SLURM ones live in tests/slurm_fixtures.py."""

from tests.slurm_fixtures import slurm_cluster  # noqa: F401  (a fixture, used by name)
