"""The clone and move tests' fixtures: local_service (tests/helpers/service.py), a sandboxed service per test."""
from tests.helpers.service import local_service  # noqa: F401
