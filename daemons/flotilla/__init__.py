"""Flotilla: a small container orchestrator with a Raft-replicated manager."""

__version__ = "0.3.0"
