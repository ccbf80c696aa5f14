"""shadowlun's VSS hardware provider: the provider itself, what it reads of a host's disks,
the host's iSCSI initiator and the array agent's client. It runs in the provider server."""
