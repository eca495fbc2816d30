"""Running sweeps on a Ray cluster: node resources, cluster configurations, schedules."""
