"""hutch: one engine, three ways to isolate the same OCI image."""

__version__ = "0.1.0"
