"""Hosting a provider out of process: its registration, the server it runs in, the RPC
between them and the proxy the requester calls it through."""
