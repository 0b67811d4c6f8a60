"""What operators use: admin commands' logic, metrics and the metrics endpoint."""
