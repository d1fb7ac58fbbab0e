"""The front-desk console (see docs/console.md)."""
