"""Ray Tune sweeps over the SFBD loop."""
