"""Long-context benchmarks: suites, scoring, the streaming runner, reports. See docs/evaluation.md."""
