"""Integration tests and their tools: a throwaway L2 lab in network namespaces (root only)."""
