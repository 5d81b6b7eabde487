"""Errors a user can cause, with the exit code the CLI turns them into."""

from __future__ import annotations


class InterceptorError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code = 1


class ConfigError(InterceptorError):
    """Bad or missing configuration: one clear line, exit 2."""

    exit_code = 2


class DatapathError(InterceptorError):
    """The kernel datapath could not be installed (missing tools, refused program)."""

    exit_code = 3
