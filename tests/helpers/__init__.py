"""Helpers the tests import: tests.helpers.runner (runner, fixtures paths), .remote (sshd), .storage (qemu-img),
.software_guest (software-CPU rigs for the small guests)."""
