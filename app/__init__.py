"""Vireo's Qt application (PyQt6). Only this package imports Qt."""
