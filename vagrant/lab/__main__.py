"""Developer commands for the lab.

  python -m lab build            build (or find) the cached image
  python -m lab up               boot and provision the lab, leave it running
  python -m lab status           what runs, where, and on which ports
  python -m lab ssh NAME [CMD]   a shell (or a command) in a VM
  python -m lab down             stop the lab
"""
from __future__ import annotations

import argparse
import sys

from .lab import Lab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build")
    sub.add_parser("up")
    sub.add_parser("status")
    sub.add_parser("down")
    ssh = sub.add_parser("ssh")
    ssh.add_argument("name")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    lab = Lab.prepare()
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
              f"(image {lab.image.path.name}, {lab.accel})")
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
