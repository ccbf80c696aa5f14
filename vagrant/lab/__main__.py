"""Developer commands for the lab.

  python -m lab build            build (or find) the cached image
  python -m lab up               boot and provision the lab, leave it running
  python -m lab status           what runs, where, and on which ports
  python -m lab ssh NAME [CMD]   a shell (or a command) in a VM
  python -m lab down             stop the lab
  python -m lab demo             boot the lab and tell the transport story with progress
  python -m lab vagrant-demo     the same story on machines `vagrant up` brought up (libvirt)
  python -m lab bench [--json F] boot the lab, measure, print the figures, write them as JSON
"""
from __future__ import annotations

import argparse
import sys

from .lab import Lab


def demo(vagrant: bool = False) -> int:
    """The transport story, narrated: a transportable shadow copy moves from host-a to host-b,
    on the QEMU lab or (vagrant) on machines Vagrant brought up and destroys afterwards."""
    from . import story  # needs the project (provider, targets) importable, as `make` arranges
    from .vagrant_lab import VagrantLab

    where = "Vagrant machines (libvirt)" if vagrant else "the lab"
    print(f"shadowlun demo on {where}: a transportable shadow copy made on host-a moves to host-b\n")
    with (VagrantLab.up() if vagrant else Lab.up()) as lab:
        r = story.run(lab, say=lambda s: print(s, flush=True))
        print()
        print(f"  {'volume':<10} {'host-a at snapshot time':<26} {'host-b read (shadow copy)':<26} "
              f"{'host-a now':<26}")
        for v in r.volumes:
            print(f"  {v:<10} {r.at_snapshot[v][:24]:<26} {r.host_b_read.get(v, '-')[:24]:<26} "
                  f"{r.host_a_after.get(v, '-')[:24]:<26}")
        print("\n  " + ", ".join(f"{k} {v:.1f} s" for k, v in r.seconds.items()))
        print("\nlab timings:\n" + lab.timings.report())
        problems = r.problems()
        for p in problems:
            print(f"FAILED: {p}")
        if not problems:
            print("\nverified: host-b read each volume's bytes of snapshot time (checksums match) while "
                  "host-a kept writing;\nthe copies arrived read-only and hidden, a second import was refused, "
                  "delete left nothing on host or array,\nand the broken copy became an ordinary writable disk")
        return 1 if problems else 0


def run_bench(json_path: str, only: str | None = None) -> int:
    """`make bench`: each figure beside its baseline from the same run; also written as JSON."""
    import json

    from . import bench

    parts = tuple(only.split(",")) if only else bench.PARTS
    unknown = [p for p in parts if p not in bench.PARTS]
    if unknown:  # before anything boots
        print(f"bench: no part {', '.join(unknown)}; the parts are {','.join(bench.PARTS)}", file=sys.stderr)
        return 2
    print("shadowlun benchmarks: each figure and its baseline, measured in one run (ratio = figure / baseline)\n")
    with Lab.up() as lab:
        result = bench.run(lab, say=lambda s: print(s, flush=True), only=parts)
        result["lab"] = {"accelerator": lab.accel, "timings": lab.timings.report()}
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n{len(result['figures'])} figures in {result['seconds']:.0f} s; JSON in {json_path}")
    for e in result["cleanup_errors"]:
        print(f"cleanup: {e}")
    return 1 if result["cleanup_errors"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build")
    sub.add_parser("up")
    sub.add_parser("status")
    sub.add_parser("down")
    sub.add_parser("demo")
    sub.add_parser("vagrant-demo")
    bench_cmd = sub.add_parser("bench")
    bench_cmd.add_argument("--json", default="bench.json", help="where to write the figures")
    bench_cmd.add_argument("--only", help="some of: commit_window,origin_size,import_time,iops,many_snapshots")
    ssh = sub.add_parser("ssh")
    ssh.add_argument("name")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command in ("demo", "vagrant-demo"):
        return demo(vagrant=args.command == "vagrant-demo")
    if args.command == "bench":
        return run_bench(args.json, args.only)
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
