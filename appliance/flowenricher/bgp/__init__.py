"""BGP through GoBGP: the gRPC client (client.py), the RIB mirror that keeps a copy of
GoBGP's best paths for enrichment (mirror.py), and the route vocabulary they share
(route.py).  Importing this package does not load gRPC or the generated stubs."""
