"""The embedded local backend: the run engine's plan executed with local worker processes as its pods."""
