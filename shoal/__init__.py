"""shoal: a control plane for fleets of AI agents."""
