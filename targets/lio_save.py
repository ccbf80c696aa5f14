"""LIO's configuration file, written by rtslib's own dump in time linear in the mappings.

rtslib finds each mapped LUN's TPG LUN (`MappedLUN.tpg_lun`, asked by its dump) by listing and
building every LUN of the TPG again. On the lab's array with 90 LUNs mapped to two hosts that
search was a third of a 6.4 s save under TCG, and it grows with LUNs times mappings; a save runs
after every burst of changes, so it competed with the hosts' logins. Here the TPGs the dump
walks list their LUNs once per save; every key of the file is still rtslib's (a lab test
compares the two dumps)."""
from __future__ import annotations

from functools import cached_property


def saving_root(rts, dumped: dict | None = None):
    """An `rts.RTSRoot` whose targets' TPGs each list their LUNs once (`rts` is rtslib_fb,
    passed in because the agent imports it lazily). Given `dumped`, a dump taken earlier, its
    save_to_file writes that instead of dumping again: the agent dumps without LIO's lock and
    writes under it."""

    class OnceListedTPG(rts.TPG):
        @cached_property
        def luns(self) -> list:
            return list(rts.TPG.luns.__get__(self))

    class ListingTarget(rts.Target):
        @property
        def tpgs(self):
            return (OnceListedTPG(self, tpg.tag, "lookup") for tpg in rts.Target.tpgs.__get__(self))

    class ListingRoot(rts.RTSRoot):
        def dump(self) -> dict:
            return super().dump() if dumped is None else dumped

        @property
        def targets(self):
            return (ListingTarget(t.fabric_module, t.wwn, "lookup")
                    for t in rts.RTSRoot.targets.__get__(self))

    return ListingRoot()
