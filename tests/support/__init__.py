"""Reusable fixtures helpers that start real components for tests (registry, ...).

Import as ``tests.support.<module>``; the repository root must be on ``sys.path`` (each area's
``conftest.py`` arranges that until the project sets pytest's ``pythonpath``).
"""
