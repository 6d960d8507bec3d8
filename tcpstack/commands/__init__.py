"""Subcommands of the ``tcpstack`` command line, one module each.

Each module provides ``add_arguments(parser)`` and ``main_from_args(args) -> int``;
``tcpstack.cli`` lists them. Errors reach the user as one line on stderr and a non-zero exit.
"""
