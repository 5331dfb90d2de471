"""The dispatcher (leader only): agents' sessions, node liveness, the
assignments pushed to agents and the status reports written back.

- ``dispatcher``: the component in the manager's process
- ``pushproc``: the push process, a child of the manager with a GIL of its
  own, which runs
- ``pusher``: the pushes to agents' listeners, and
- ``front``: the dispatcher port, where agents' heartbeats and status
  reports arrive.

Its HTTP views on the API port are a blueprint like the others
(``manager/api/dispatcher.py``).
"""
