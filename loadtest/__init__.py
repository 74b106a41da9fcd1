"""Load generation and benchmarks; talks to the service over HTTP."""
