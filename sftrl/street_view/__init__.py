"""Street data and street-view imagery providers."""
