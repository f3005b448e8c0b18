"""Helpers for tests that start real processes (Consul agents, ...).

Import from ``support.<module>``: pytest puts ``tests/`` on ``sys.path``.
"""
