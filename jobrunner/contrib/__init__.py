"""Integrations with web frameworks, built on jobrunner's public interface: ``django``."""
