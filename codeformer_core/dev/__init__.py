"""Development aids never imported at run time: synthetic weights and benchmarks."""
