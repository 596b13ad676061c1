"""The V-IRL navigation environment (``sftrl/VIRL-v0``): routes, instructions, rails, verifier, env."""
