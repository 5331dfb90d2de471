"""Compose files as Flotilla stacks.

``merge.load`` reads one or more Compose files (merged in order, as Compose
merges ``-f`` files), interpolates ``${VAR}`` from the environment
(``interpolate``) and remembers the file and line of every key
(``yamlpos``). ``translate`` turns the result into service specs (plain
dicts in the shape of ``flotilla.model.specs.ServiceSpec``) for one stack:
service ``web`` of stack ``shop`` becomes service ``shop_web``.

Anything Flotilla cannot honour is an error naming the file, the line and the
key path, e.g. ``compose.yml:14: services.web.network_mode: not supported by
Flotilla``. Nothing is silently dropped, and all errors are reported
together. This package does no network access; ``cli/stack.py`` sends the
specs.
"""
