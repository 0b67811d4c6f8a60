"""The processes: the supervisor, its pools and children, and what crosses their pipes."""
