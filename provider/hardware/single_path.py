"""The transport of a host without multipathd: one session, to the first portal the array gives.

Logging in on more portals would give each LUN one sdX per portal and nothing to merge them, so a
host without dm-multipath uses one path, as it always has.
"""
from __future__ import annotations

from provider.hardware.iscsi import Initiator


class SinglePath:
    """The provider's initiator over one portal; `initiator` does the work."""

    def __init__(self, initiator: Initiator) -> None:
        self.initiator = initiator

    def connect(self, target_iqn: str, portals: list[str], chap_user: str | None, chap_secret: str | None,
                luns: dict[int, str], timeout: float) -> dict[str, str]:
        return self.initiator.connect(target_iqn, portals[0], chap_user, chap_secret, luns, timeout)

    def find_disk(self, wwid: str) -> str | None:
        return self.initiator.find_disk(wwid)

    def remove_disk(self, block_name_or_path: str) -> None:
        self.initiator.remove_disk(block_name_or_path)

    def disconnect(self, target_iqn: str, portals: list[str], disks: list[str]) -> None:
        self.initiator.disconnect(target_iqn, portals[0], disks)
