"""Developer commands for the lab.

  python -m lab build            build (or find) the cached image
  python -m lab up               boot and provision the lab, leave it running
  python -m lab status           what runs, where, and on which ports
  python -m lab ssh NAME [CMD]   a shell (or a command) in a VM
  python -m lab down             stop the lab
  python -m lab demo             boot the lab and run the main scenario with progress
"""
from __future__ import annotations

import argparse
import sys

from . import smoke
from .lab import Lab


def demo() -> int:
    """The smoke scenario, narrated (the transportable shadow copy story replaces it later)."""
    print("shadowlun lab demo: a thin snapshot on the array travels to host-b over iSCSI\n")
    with Lab.up() as lab:
        r = smoke.run(lab)
        print()
        print(f"  LUN serial (chosen by us)      {r.serial}")
        print(f"  WWID host-b found              {r.host_b_disk['wwid']}  ({r.host_b_disk['device']}, "
              f"{r.host_b_disk['vendor']} {r.host_b_disk['model']}, "
              f"{'read-only' if r.host_b_disk['read_only'] else 'read-write'})")
        print(f"  origin at snapshot time        sha256 {r.origin_sha256_at_snapshot}")
        print(f"  origin now (overwritten)       sha256 {r.origin_sha256_after}")
        print(f"  snapshot as read on host-b     sha256 {r.host_b_sha256}")
        print(f"  host-b with a wrong CHAP key   {'refused' if r.host_b_wrong_chap_refused else 'ACCEPTED'}")
        print(f"  host-a (not masked)            {'refused' if r.host_a_login_refused else 'LOGGED IN'}")
        print("\nlab timings:\n" + lab.timings.report())
        problems = r.problems()
        for p in problems:
            print(f"FAILED: {p}")
        if not problems:
            print("\nverified: host-b read the snapshot's bytes (checksums match); host-a saw nothing")
        return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build")
    sub.add_parser("up")
    sub.add_parser("status")
    sub.add_parser("down")
    sub.add_parser("demo")
    ssh = sub.add_parser("ssh")
    ssh.add_argument("name")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "demo":
        return demo()
    lab = Lab.prepare(build=args.command in ("build", "up"))
    if args.command == "build":
        print(lab.image.path)
    elif args.command == "up":
        if lab.is_running():
            print(f"lab already running in {lab.run_dir}")
        else:
            lab.boot()
        print(lab.timings.report())
    elif args.command == "status":
        running = lab.is_running()
        print(f"lab in {lab.run_dir}: {'running' if running else 'not running'} "
              f"(image {lab.image.path.name})")
        for vm in lab.vms.values():
            pid = vm.pid()
            print(f"  {vm.name:<8} {'pid ' + str(pid) if pid else 'stopped':<12} "
                  f"ssh 127.0.0.1:{vm.ssh_port or '-'}  console {vm.console_log}")
    elif args.command == "ssh":
        if not lab.is_running():
            print("lab is not running: python -m lab up", file=sys.stderr)
            return 1
        return lab.vm(args.name).ssh.interactive(args.cmd or None)
    elif args.command == "down":
        lab.is_running()  # loads the VMs' state (ports) of a running lab
        lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
