"""Framework integrations: each imports its framework lazily; nothing in the core imports them."""
