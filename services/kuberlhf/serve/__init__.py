"""Ray Serve applications: the reward-model service."""
