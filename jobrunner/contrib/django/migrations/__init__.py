"""The migrations of the task result table."""
