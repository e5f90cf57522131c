"""Speed benchmarks: each prints wall times and ratios measured side by side in one run."""
