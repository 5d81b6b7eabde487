"""Link-local metadata service: node daemon, central backend and guest formats."""

__version__ = "0.1.0"
