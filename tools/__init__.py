"""Developer tools, not lessons: benchmarks, the results tables, the app screenshot and the GPU
runs."""
