"""Leader-only orchestration: keep each service's tasks as its spec says."""
