"""Unit test of targets.lio_save: the dump's TPG lists its LUNs once, however many mappings ask
for their TPG LUN. The fake below walks objects the way rtslib's dump does (root -> targets ->
TPGs -> ACLs -> mapped LUNs, each mapped LUN searching its ACL's TPG's LUNs); the real dump is
compared with rtslib's on the lab (test_array_agent.py)."""
from __future__ import annotations

from types import SimpleNamespace

from targets.lio_save import saving_root


class FakeRts:
    def __init__(self, luns: int, acls: int) -> None:
        self.listings = 0
        rts = self

        class TPG:
            def __init__(self, target, tag, mode="any"):
                assert mode == "lookup", "the dump must not create a TPG"
                self.target, self.tag = target, tag

            @property
            def luns(self):
                rts.listings += 1
                return (SimpleNamespace(lun=i) for i in range(luns))

            def dump(self):
                return {"tag": self.tag, "luns": [lun.lun for lun in self.luns],
                        "node_acls": [[next(lun.lun for lun in self.luns if lun.lun == m)
                                       for m in range(luns)] for _ in range(acls)]}

        class Target:
            def __init__(self, fabric_module, wwn, mode="any"):
                assert mode == "lookup", "the dump must not create a target"
                self.fabric_module, self.wwn = fabric_module, wwn

            @property
            def tpgs(self):
                return (TPG(self, 1, "lookup"),)

            def dump(self):
                return {"wwn": self.wwn, "tpgs": [tpg.dump() for tpg in self.tpgs]}

        class RTSRoot:
            @property
            def targets(self):
                return (Target("iscsi", "iqn.2026-11.lab.shadowlun:array.target", "lookup"),)

            def dump(self):
                return {"targets": [t.dump() for t in self.targets]}

        self.TPG, self.Target, self.RTSRoot = TPG, Target, RTSRoot


def test_the_saved_dump_lists_each_tpgs_luns_once_whatever_the_mappings():
    plain = FakeRts(luns=30, acls=3)
    expected = plain.RTSRoot().dump()
    assert plain.listings == 1 + 3 * 30  # the TPG's own listing, then one per mapping
    once = FakeRts(luns=30, acls=3)
    assert saving_root(once).dump() == expected
    assert once.listings == 1
