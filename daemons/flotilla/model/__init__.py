"""The shared vocabulary: what a service, a task, a node and the API's
bodies look like, and how they are checked. Plain data and pydantic models
with no web framework and no Raft: imported by the CLI, the managers and
the agents alike."""
