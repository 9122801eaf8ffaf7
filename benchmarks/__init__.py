"""clarion benchmark harness (run on demand; see BENCHMARKS.md). Not part of the package."""
