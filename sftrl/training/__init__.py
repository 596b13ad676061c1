"""Training: logged episodes to SFT data, SFT with TRL, and multi-turn RL with verifier rewards."""
