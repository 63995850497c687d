"""The core daemon (`utp core`), its gRPC API, sessions and the command line."""
