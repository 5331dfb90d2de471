"""The syntax of names and keys, as regular expressions: what the spec
models check, and what the CLI checks before it sends anything (its Compose
translator). No pydantic here, so the CLI imports it cheaply."""

from __future__ import annotations

import re

# A service (and a volume, a dependency's target): at most 63 characters.
SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# The key of an environment entry (KEY=VALUE).
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# A label's key.
LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$")
# A config or an admin bundle: at most 64 characters.
OBJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A node's hostname.
HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
# A name other containers look up by DNS (a service on a network, an alias):
# one DNS label, at most 63 characters of letters, digits, '-' and '_' (a
# stack's services are named STACK_NAME, as in Docker, whose resolver answers
# such names too), starting and ending with a letter or digit.
DNS_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$")
# A network: as Docker names them.
NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
