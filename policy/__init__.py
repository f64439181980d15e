"""Authentication and access control, one layer each."""
