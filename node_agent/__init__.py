"""node_agent package."""
