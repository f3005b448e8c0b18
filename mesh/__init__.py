"""Shared vocabulary of the mesh: state types, specs, the Store, errors, the meshctl CLI."""
