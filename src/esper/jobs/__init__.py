"""Jobs the `esper` command runs: composition of every subsystem, plus the run folder."""
