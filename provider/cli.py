"""shadowlun: the requester's command line (vshadow/diskshadow habits), over the coordinator.

    shadowlun create [--context backup] [--transportable] [--bcd FILE] VOLUME...
    shadowlun import FILE          import a transportable set on this host (once)
    shadowlun recover              abort sets a crash left half-made
    shadowlun register-provider    register shadowlun's own provider on this host

Errors name their VSS code; the exit status is 2 for the caller's errors (VssUserError), 1 for
failures of the system (VssRuntimeError). `--json` prints machine-readable results and errors.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import bcd
from .hardware_provider import PROVIDER_ID, PROVIDER_NAME, PROVIDER_VERSION, VERSION_ID
from .hresult import HResult, VssError, VssUserError, vss_error
from .vss_types import SnapshotContext, VolumeSnapshotAttributes

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
    from .proxy import ProviderProxy
    from .registry import ProviderRegistry

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


def cmd_create(args: argparse.Namespace) -> dict:
    from .coordinator import Coordinator

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
        doc, report = Coordinator(loaded).create(args.volumes, context, on_step=lambda s: progress(args, s))
    xml = bcd.to_xml(doc)
    if args.bcd:
        Path(args.bcd).write_bytes(xml)
    return {
        "set_id": doc.set_id, "context": doc.context, "provider_id": doc.provider_id,
        "snapshots": [{"snapshot_id": s.snapshot_id, "volume": s.volume_name,
                       "target_luns": [m.destination for m in s.luns]} for s in doc.snapshots],
        "bcd": args.bcd, "report": report, "provider_server_pids": pids,
    }


def cmd_import(args: argparse.Namespace) -> dict:
    """Import a transportable set from its document (vshadow -i): the disks appear by WWID."""
    from .coordinator import Coordinator

    xml = Path(args.document).read_bytes()
    with loaded_providers() as loaded:
        result = Coordinator(loaded).import_document(xml)
    return {"set_id": result.set_id, "status": result.status.name, "hresult": result.status.hex,
            "snapshots": result.snapshots, "missing": result.missing}


def cmd_recover(args: argparse.Namespace) -> dict:
    from .coordinator import Coordinator

    with loaded_providers() as loaded:
        return {"aborted": Coordinator(loaded).recover()}


def cmd_register_provider(args: argparse.Namespace) -> dict:
    """Idempotent: an identical registration is left as it is."""
    from .registry import ProviderRegistration, ProviderRegistry

    reg = ProviderRegistration(
        provider_id=PROVIDER_ID, version_id=VERSION_ID, name=PROVIDER_NAME, version=PROVIDER_VERSION,
        exec=(sys.executable, "-m", "provider.server", "--socket", str(PROVIDER_SOCKET),
              "--provider", "provider.hardware_provider:make"),
        socket=PROVIDER_SOCKET)
    registry = ProviderRegistry()
    try:
        if registry.get(PROVIDER_ID) == reg:
            return {"registered": str(PROVIDER_ID), "changed": False}
        registry.unregister(PROVIDER_ID)
    except VssError as e:
        if e.hresult != HResult.VSS_E_PROVIDER_NOT_REGISTERED:
            raise
    registry.register(reg)
    return {"registered": str(PROVIDER_ID), "changed": True}


def progress(args: argparse.Namespace, step: str) -> None:
    if not args.json:
        print(f"  {step}", file=sys.stderr, flush=True)


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
    create.add_argument("--plex", action="store_true", help="ask for full copies (not supported)")
    create.add_argument("--differential", action="store_true")
    create.add_argument("--bcd", metavar="FILE", help="write the Backup Components Document here")
    create.set_defaults(func=cmd_create)
    imp = sub.add_parser("import", help="import a transportable snapshot set from its document")
    imp.add_argument("document", help="the Backup Components Document (XML) written by create --bcd")
    imp.set_defaults(func=cmd_import)
    sub.add_parser("recover").set_defaults(func=cmd_recover)
    sub.add_parser("register-provider").set_defaults(func=cmd_register_provider)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="shadowlun: %(name)s: %(message)s")
    try:
        result = args.func(args)
    except VssError as e:
        if args.json:
            print(json.dumps(e.to_dict()), file=sys.stderr)
        else:
            print(f"shadowlun: {e}", file=sys.stderr)
        return 2 if isinstance(e, VssUserError) else 1
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
