"""Flywheel: inline code completion that learns from its users."""
