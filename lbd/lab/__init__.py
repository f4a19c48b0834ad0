"""A throwaway L2 network of namespaces (a bridge, a client, lbd nodes, backends) for `lbd demo` and the integration tests."""
