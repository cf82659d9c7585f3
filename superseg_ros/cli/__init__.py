"""Console entry points: superseg-extract, superseg-bench, superseg-export."""
