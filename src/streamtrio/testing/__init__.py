"""Test helpers for streamtrio apps (public)."""
