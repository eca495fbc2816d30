"""versweep host side: grids, Ray Tune trials, backends and MLflow records (never imports torch)."""
