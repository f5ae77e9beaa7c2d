"""Helpers shared by several test modules: data builders, RELION runs, launchers and image checks.

Test modules import these (never each other); the pytest fixtures among them are registered in
``conftest.py``."""
