"""The shadowlun lab: real Debian VMs (array, host-a, host-b) under QEMU, built and booted by
the project itself, for system tests, the demo and CI. See vagrant/README section in README.md."""
