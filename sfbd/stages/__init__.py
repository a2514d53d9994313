"""The SFBD stages on Ray: denoise (Ray Data), refit (Ray Train), evaluate."""
