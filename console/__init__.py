"""The operator console (`utp console`): a Textual app that talks to the daemon only through gRPC."""
