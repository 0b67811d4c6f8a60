"""The example's Django project: settings and URLs."""
