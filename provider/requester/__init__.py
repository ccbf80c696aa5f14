"""The requester's side (the VSS coordinator's role): creation, import, break, delete and
resync of shadow copies on this host, their documents, flags, catalog and thaw guard."""
