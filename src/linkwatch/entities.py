"""The entity stage (being built): see `signals`."""
