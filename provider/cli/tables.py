"""Human output of the shadowlun CLI: one small table per result, with rich (stdout)."""
from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.table import Table


def _table(title: str, columns: list[str], rows: list[list]) -> Table:
    t = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    return t


def _created(r: dict) -> list:
    held = r["report"]["seconds"].get("writes held")
    rows = [[s["snapshot_id"], s["volume"], ", ".join(t.get("serial_number", "?") for t in s["target_luns"])]
            for s in r["snapshots"]]
    out: list = [_table(f"snapshot set {r['set_id']} (context {r['context']:#x})",
                        ["shadow copy", "volume", "shadow LUN serial"], rows)]
    if held is not None:
        out.append(f"writes held {held:.2f} s")
    if r.get("bcd"):
        out.append(f"Backup Components Document: {r['bcd']}")
    if "exec_status" in r:
        out.append(f"the command exited with status {r['exec_status']}")
    if "released" in r:
        out.append(f"released (auto-release context): {len(r['released'])} shadow copies deleted")
    return out


def _imported(r: dict) -> list:
    rows = [[s["snapshot_id"], s["volume"], s["device"], " ".join(s["devices"]), ", ".join(s["flags"])]
            for s in r["snapshots"]]
    out: list = [_table(f"imported snapshot set {r['set_id']} ({r['status']})",
                        ["shadow copy", "original volume", "volume here", "disks", "flags"], rows)]
    out += [f"not imported: {m['volume']} ({m['snapshot_id']}): {m['why']}" for m in r["missing"]]
    return out


def _listed(r: dict) -> list:
    if not r["sets"]:
        return ["no shadow copies are imported on this host"]
    out: list = []
    for s in r["sets"]:
        rows = [[x["snapshot_id"], x["volume"], x["device"] or x.get("problem"), ", ".join(x["flags"]),
                 {True: "yes", False: "no"}.get(x["read_only"]), x["exposed"] or "-"] for x in s["snapshots"]]
        out.append(_table(f"set {s['set_id']} from {s['originating_host']}, created {s['created']}, "
                          f"imported {s['imported']}",
                          ["shadow copy", "original volume", "volume here", "flags", "read-only", "exposed"], rows))
    return out


def _broken(r: dict) -> list:
    how = ("LUNs, masked from this host" if r["masked"] else "writable disks" if r["writable"]
           else "read-only disks")
    return [_table(f"snapshot set {r['set_id']} broken: ordinary {how}, no longer shadow copies",
                   ["was shadow copy", "original volume", "device"],
                   [[v["snapshot_id"], v["volume"], v["device"]] for v in r["volumes"]])]


RENDERERS: dict[str, Callable[[dict], list]] = {
    "create": _created,
    "import": _imported,
    "list": _listed,
    "expose": lambda r: [f"shadow copy {r['snapshot_id']}: {r['device']}"
                         + ("" if r["exposed"] == "device" else f" mounted read-only at {r['exposed']}")],
    "unexpose": lambda r: [f"shadow copy {r['snapshot_id']}: no longer exposed ({r['unexposed']})"],
    "break": _broken,
    "delete": lambda r: [f"deleted {len(r['deleted'])} shadow cop{'y' if len(r['deleted']) == 1 else 'ies'}: "
                         + (", ".join(r["deleted"]) or "none")],
    "resync": lambda r: [_table(f"resynchronised from snapshot set {r['set_id']}", ["shadow copy", "volume"],
                                [[x["snapshot_id"], x["volume"]] for x in r["resynced"]]),
                         "original disks: " + ", ".join(r["disks"])],
    "recover": lambda r: [f"aborted {len(r['aborted'])} set(s) left by a crash" + "".join(
                          f"\n  {i}" for i in r["aborted"])],
    "register-provider": lambda r: [f"provider {r['registered']} registered"
                                    + (" (changed)" if r["changed"] else " (unchanged)")
                                    + f"; udev rule {r['udev_rule']}"],
}


def render(command: str, result: dict, console: Console | None = None) -> None:
    console = console or Console(soft_wrap=False)
    for item in RENDERERS[command](result):
        console.print(item)
