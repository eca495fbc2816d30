"""versweep analysis: version-comparison reports from MLflow records (never imports torch)."""
