"""The display tests' fixtures: local_service (tests/helpers/service.py), for the manager's console tab."""
from tests.helpers.service import local_service  # noqa: F401
