"""Studies of the method and the system: benchmark, NFE study, experiment table, sweep timing."""
