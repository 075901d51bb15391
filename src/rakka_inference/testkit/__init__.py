"""Test doubles shipped with the package, for our tests and for users' own."""
