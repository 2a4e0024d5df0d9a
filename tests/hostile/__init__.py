"""Hostile input against every embedding route, by theme; see conftest.py, routes.py and checks.py."""
