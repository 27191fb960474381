"""The GUI tests' fixtures: local_service (tests/helpers/service.py), the private Vireo service the manager is a
client of, sandboxed per test."""
from tests.helpers.service import local_service  # noqa: F401
