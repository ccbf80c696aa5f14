"""shadowlun: the requester's command line (vshadow/diskshadow habits), over the coordinator.

    shadowlun create [--context backup] [--transportable] [--bcd FILE] [--exec CMD] VOLUME...
    shadowlun import FILE                  import a transportable set on this host (once)
    shadowlun list                         the shadow copies imported on this host
    shadowlun expose SNAPSHOT_ID [DIR]     mount read-only at DIR, or present the block device
    shadowlun unexpose SNAPSHOT_ID
    shadowlun break [--writable|--mask] [--revert-identity] SET_ID
                                                 the LUNs become ordinary LUNs, no longer tracked
    shadowlun delete (--snapshot ID | --set ID | --all)
    shadowlun resync --bcd FILE [--snapshot ID]...   revert the original LUNs on the array
    shadowlun recover                      abort sets a crash left half-made, release the
                                           auto-release sets of a requester that died
    shadowlun register-provider            register shadowlun's provider and its udev rule here

Errors name their VSS code; the exit status is 2 for the caller's errors (VssUserError), 1 for
failures of the system (VssRuntimeError), as provider.cli.errors decides. `--json` prints machine-readable results and errors;
otherwise results are tables on stdout and progress goes to stderr. The same operations are the
methods of provider.requester.coordinator.Coordinator (see `coordinator()` here for how to make one).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from provider.requester import bcd
from provider.cli.errors import SystemFailure, read_file, report
from provider.contract.hresult import HResult, VssError, vss_error
from provider.contract.vss_types import SnapshotContext, VolumeSnapshotAttributes

PROVIDER_SOCKET = Path("/run/shadowlun/provider.sock")
CONTEXTS = {c.name.removeprefix("VSS_CTX_").lower(): c for c in SnapshotContext if c.name != "VSS_CTX_ALL"}


def parse_context(name: str) -> int:
    if name.lower() in CONTEXTS:
        return int(CONTEXTS[name.lower()])
    try:
        return int(name, 0)
    except ValueError:
        raise vss_error(HResult.VSS_E_UNSUPPORTED_CONTEXT,
                        f"context {name!r}: one of {', '.join(CONTEXTS)} or a number") from None


def providers() -> list:
    """Every registered provider, as proxies (servers start on demand at the first call)."""
    from provider.hosting.proxy import ProviderProxy
    from provider.hosting.registry import ProviderRegistry

    return [ProviderProxy(r) for r in ProviderRegistry().load_all()]


@contextmanager
def loaded_providers() -> Iterator[list]:
    """The registered providers, each server started and OnLoad called; OnUnload and stop after,
    whatever happened."""
    loaded = providers()
    try:
        for p in loaded:
            p.start()
        yield loaded
    finally:
        for p in loaded:
            p.on_unload(True)
            p.stop()


def coordinator(loaded: list | None = None):
    """A Coordinator over `loaded` providers (none: for what only reads or changes this host)."""
    from provider.requester.coordinator import Coordinator

    return Coordinator(loaded or [])


def cmd_create(args: argparse.Namespace) -> dict:
    context = parse_context(args.context)
    for flag, attr in (("transportable", VolumeSnapshotAttributes.VSS_VOLSNAP_ATTR_TRANSPORTABLE),
                       ("plex", VolumeSnapshotAttributes.VSS_VOLSNAP_ATTR_PLEX),
                       ("differential", VolumeSnapshotAttributes.VSS_VOLSNAP_ATTR_DIFFERENTIAL)):
        if getattr(args, flag):
            context |= int(attr)
    with loaded_providers() as loaded:
        if not loaded:
            raise vss_error(HResult.VSS_E_PROVIDER_NOT_REGISTERED, "no provider is registered on this host")
        pids = [p.server_pid for p in loaded]
        coord = coordinator(loaded)
        bar = progress_bar(args, "full copies on the array") if args.plex else nullcontext(lambda done, total: None)
        with bar as advance:
            doc, report = coord.create(args.volumes, context, on_step=lambda s: step(args, s),
                                       on_progress=advance)
        out = {"set_id": doc.set_id, "context": doc.context, "provider_id": doc.provider_id,
               "snapshots": [{"snapshot_id": s.snapshot_id, "volume": s.volume_name,
                              "target_luns": [m.destination for m in s.luns]} for s in doc.snapshots],
               "bcd": args.bcd, "report": report, "provider_server_pids": pids}
        # An auto-release set lives while this requester does: the document is written, the
        # command runs, then the set goes, whatever happened (SIGTERM too; SIGKILL leaves it to
        # `recover`).
        auto_release = coord.holds.get(doc.set_id) is not None
        try:
            if auto_release:
                exit_on_sigterm()
            if args.bcd:
                Path(args.bcd).write_bytes(bcd.to_xml(doc))
            if auto_release and args.exec:
                step(args, f"running {args.exec!r} with the shadow copies of set {doc.set_id}")
                out["exec_status"] = run_with_set(args.exec, doc.set_id, coord.list_sets())
        finally:
            if auto_release:
                step(args, f"releasing snapshot set {doc.set_id} (auto-release context)")
                out["released"] = coord.release(doc.set_id)["released"]
        return out


def exit_on_sigterm() -> None:
    """SIGTERM unwinds this process like Ctrl-C (SystemExit, status 128 + 15), so that its
    cleanup runs: a backup set is released, a resync cancelled."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def run_with_set(command: str, set_id: str, listed: list[dict]) -> int:
    """Run the requester's command (a shell line) while the set exists, as vshadow -exec does;
    SHADOWLUN_SET_ID and SHADOWLUN_DEVICES (one volume device per shadow copy, in the order of
    the volumes) tell it where the copies are. Its exit status is reported, not raised."""
    devices = [snap["device"] or "" for s in listed if s["set_id"] == set_id for snap in s["snapshots"]]
    env = {**os.environ, "SHADOWLUN_SET_ID": set_id, "SHADOWLUN_DEVICES": " ".join(devices)}
    return subprocess.run(command, shell=True, env=env, stdin=subprocess.DEVNULL).returncode


def cmd_import(args: argparse.Namespace) -> dict:
    """Import a transportable set from its document (vshadow -i): the disks appear by WWID."""
    xml = read_file(args.document, "the document")
    step(args, f"importing the set of {args.document}")
    with loaded_providers() as loaded:
        result = coordinator(loaded).import_document(xml)
    return {"set_id": result.set_id, "status": result.status.name, "hresult": result.status.hex,
            "snapshots": result.snapshots, "missing": result.missing}


def cmd_list(args: argparse.Namespace) -> dict:
    return {"sets": coordinator().list_sets()}


def cmd_expose(args: argparse.Namespace) -> dict:
    return coordinator().expose(args.snapshot_id, args.directory)


def cmd_unexpose(args: argparse.Namespace) -> dict:
    return coordinator().unexpose(args.snapshot_id)


def cmd_break(args: argparse.Namespace) -> dict:
    with loaded_providers() as loaded:
        return coordinator(loaded).break_set(args.set_id, writable=args.writable, mask=args.mask,
                                             revert_identity=args.revert_identity)


def cmd_delete(args: argparse.Namespace) -> dict:
    with loaded_providers() as loaded:
        return coordinator(loaded).delete(snapshot_id=args.snapshot, set_id=args.set, everything=args.all)


def cmd_resync(args: argparse.Namespace) -> dict:
    xml = read_file(args.bcd, "the Backup Components Document")
    exit_on_sigterm()  # the resync is cancelled then, as on Ctrl-C
    with loaded_providers() as loaded, progress_bar(args, "resync on the array") as advance:
        return coordinator(loaded).resync(xml, args.snapshot or None, on_progress=advance)


def cmd_recover(args: argparse.Namespace) -> dict:
    with loaded_providers() as loaded:
        return {"aborted": coordinator(loaded).recover()}


def cmd_register_provider(args: argparse.Namespace) -> dict:
    """Idempotent: an identical registration is left as it is."""
    # Imported here, not at the top: the other commands reach the provider through its server
    # and need not pay for loading its modules in this process too.
    from provider.hardware.hardware_provider import PROVIDER_ID, PROVIDER_NAME, PROVIDER_VERSION, VERSION_ID
    from provider.hosting.registry import ProviderRegistration, ProviderRegistry

    reg = ProviderRegistration(
        provider_id=PROVIDER_ID, version_id=VERSION_ID, name=PROVIDER_NAME, version=PROVIDER_VERSION,
        exec=(sys.executable, "-m", "provider.hosting.server", "--socket", str(PROVIDER_SOCKET),
              "--provider", "provider.hardware.hardware_provider:make"),
        socket=PROVIDER_SOCKET)
    from provider.requester.shadow_flags import UDEV_RULE_PATH, install_udev_rule

    rule = {"udev_rule": str(UDEV_RULE_PATH), "udev_rule_changed": install_udev_rule()}
    registry = ProviderRegistry()
    try:
        if registry.get(PROVIDER_ID) == reg:
            return {"registered": str(PROVIDER_ID), "changed": False, **rule}
        registry.unregister(PROVIDER_ID)
    except VssError as e:
        if e.hresult != HResult.VSS_E_PROVIDER_NOT_REGISTERED:
            raise
    registry.register(reg)
    return {"registered": str(PROVIDER_ID), "changed": True, **rule}


def step(args: argparse.Namespace, text: str) -> None:
    """One line per step of long work, on stderr (readable over SSH and in logs, unlike a bar)."""
    if not args.json:
        print(f"  {text}", file=sys.stderr, flush=True)


@contextmanager
def progress_bar(args: argparse.Namespace, what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar of bytes on stderr (none with --json); yields advance(done, total)."""
    if args.json:
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("  {task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total or None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shadowlun", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log each step, and the provider server's own output, on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a snapshot set of one or more volumes")
    create.add_argument("volumes", nargs="+", metavar="VOLUME", help="mount point or block device")
    create.add_argument("--context", default="backup", help=f"{', '.join(CONTEXTS)} or a number")
    create.add_argument("--transportable", action="store_true", help="for import on another host")
    create.add_argument("--plex", action="store_true",
                        help="full copies, made on the array after the commit (progress shown)")
    create.add_argument("--differential", action="store_true")
    create.add_argument("--bcd", metavar="FILE", help="write the Backup Components Document here")
    create.add_argument("--exec", metavar="COMMAND",
                        help="auto-release contexts (backup): run this shell command while the shadow "
                             "copies exist, then release them")
    create.set_defaults(func=cmd_create)
    imp = sub.add_parser("import", help="import a transportable snapshot set from its document")
    imp.add_argument("document", help="the Backup Components Document (XML) written by create --bcd")
    imp.set_defaults(func=cmd_import)
    sub.add_parser("list", help="the shadow copies imported on this host").set_defaults(func=cmd_list)
    expose = sub.add_parser("expose", help="mount a shadow copy read-only, or present its block device")
    expose.add_argument("snapshot_id")
    expose.add_argument("directory", nargs="?", help="an empty directory (made if missing)")
    expose.set_defaults(func=cmd_expose)
    unexpose = sub.add_parser("unexpose", help="undo expose")
    unexpose.add_argument("snapshot_id")
    unexpose.set_defaults(func=cmd_unexpose)
    brk = sub.add_parser("break", help="make a set's shadow LUNs ordinary disks, no longer tracked")
    brk.add_argument("set_id")
    how = brk.add_mutually_exclusive_group()
    how.add_argument("--writable", action="store_true", help="also clear read-only and hidden (MAKE_READ_WRITE)")
    how.add_argument("--mask", action="store_true",
                     help="hide the LUNs from this host, keeping them on the array (MASK_LUNS)")
    brk.add_argument("--revert-identity", action="store_true",
                     help="the LUNs take their originals' identity (REVERT_IDENTITY_ALL); refused while an "
                          "original is on this host")
    brk.set_defaults(func=cmd_break)
    delete = sub.add_parser("delete", help="delete shadow copies and their LUNs (host and array)")
    which = delete.add_mutually_exclusive_group(required=True)
    which.add_argument("--snapshot", metavar="ID")
    which.add_argument("--set", metavar="ID")
    which.add_argument("--all", action="store_true", help="every shadow copy imported on this host")
    delete.set_defaults(func=cmd_delete)
    resync = sub.add_parser("resync", help="revert the original LUNs to shadow copies, on the array")
    resync.add_argument("--bcd", required=True, metavar="FILE", help="the set's Backup Components Document")
    resync.add_argument("--snapshot", action="append", metavar="ID", help="only this copy (repeatable)")
    resync.set_defaults(func=cmd_resync)
    sub.add_parser("recover", help="abort sets a crash left half-made; release auto-release sets "
                                   "whose requester died").set_defaults(func=cmd_recover)
    sub.add_parser("register-provider").set_defaults(func=cmd_register_provider)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="shadowlun: %(name)s: %(message)s")
    try:
        result = args.func(args)
    except VssError as e:
        return report(e, args.json)
    except OSError as e:  # not a file the user named (those are FileReadError): the system's
        return report(SystemFailure(e), args.json)
    if args.json:
        print(json.dumps(result))
    else:
        from provider.cli.tables import render

        render(args.command, result)
    return 1 if result.get("exec_status") else 0  # the requester's command failed

