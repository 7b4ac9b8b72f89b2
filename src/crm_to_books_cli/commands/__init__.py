"""Subcommands of `crm-to-books`: each module here defines `register(subparsers)`.

`register` adds its subparser and sets `func` (taking the parsed args, returning an exit code).
"""
