"""Lightning callbacks: throughput/memory logging, Performer feature redraws, run summary."""
