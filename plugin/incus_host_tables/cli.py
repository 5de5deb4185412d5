"""Command line. Imports stay inside the commands: `device` runs in hot
paths and must not pay for pylxd."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .exitcodes import ExitCode

if TYPE_CHECKING:
    from .commands import KernelRules
    from .policy import Policy

EXIT_OK = ExitCode.OK
EXIT_INVALID = ExitCode.INVALID
EXIT_USAGE = ExitCode.USAGE
EXIT_APPLY_FAILED = ExitCode.APPLY_FAILED
EXIT_UNDO_FAILED = ExitCode.UNDO_FAILED
EXIT_ENVIRONMENT = ExitCode.ENVIRONMENT


def _rule_priority(text: str) -> int:
    from .numbers import NumberError, parse_decimal

    # 32766 is the main table's own rule: ours must come before it.
    try:
        return parse_decimal("rule priority", text, 1, 32765)
    except NumberError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _rp_table(text: str) -> int:
    from .numbers import NumberError, parse_decimal

    try:
        table = parse_decimal("reverse-path table", text, 1, 4294967295)
    except NumberError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    # default (253), main (254), local (255): the kernel's own tables.
    if 253 <= table <= 255:
        raise argparse.ArgumentTypeError(
            f"reverse-path table {text!r} is one of the kernel's own tables (253-255)"
        )
    return table


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _policy_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy",
        metavar="PATH",
        help="tenant policy file (default $INCUS_HOST_TABLES_POLICY, else "
        "/etc/incus-host-tables/policy.yaml; no file: no restriction)",
    )


def build_parser() -> argparse.ArgumentParser:
    from .desired import DEFAULT_RP_TABLE, DEFAULT_RULE_PRIORITY

    parser = argparse.ArgumentParser(
        prog="incus-host-tables",
        description="Keep routed NICs' host routes only in the routing tables chosen.",
    )
    for flag, parse, default, what in (
        ("--rule-priority", _rule_priority, DEFAULT_RULE_PRIORITY,
         "preference of the plugin's policy rules"),
        ("--rp-table", _rp_table, DEFAULT_RP_TABLE, "the plugin's reverse-path routing table"),
    ):  # fmt: skip
        env = "INCUS_HOST_TABLES_" + flag[2:].upper().replace("-", "_")
        parser.add_argument(
            flag,
            type=parse,
            # A string default goes through type= too: a bad value is a usage error.
            default=os.environ.get(env, str(default)),
            help=f"{what} (default {default}, or ${env})",
        )
    sub = parser.add_subparsers(dest="command", required=True)

    device = sub.add_parser("device", help="act on one host interface (no Incus needed)")
    dsub = device.add_subparsers(dest="action", required=True)
    for action, text in (
        ("plan", "print what apply would change; change nothing"),
        ("apply", "make the kernel match the device config"),
        ("cleanup", "remove the device's routes and rules from every table"),
    ):
        p = dsub.add_parser(action, help=text, description=text)
        p.add_argument("--host-name", required=True, help="host-side interface (vethXXXX)")
        p.add_argument(
            "--full",
            action="store_true",
            help="one line per route even for large plans (default: counts per table "
            "beyond 20 routes of a kind)",
        )
        p.add_argument(
            "config",
            nargs="*",
            type=_key_value,
            metavar="KEY=VALUE",
            help="NIC device keys as Incus stores them",
        )

    def instance_parser(name: str, text: str, *, target: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        if target == "one":
            p.add_argument("instance")
        elif target == "optional":
            p.add_argument("instance", nargs="?")
        p.add_argument("--project", default="default")
        if target != "one":
            p.add_argument("--all-projects", action="store_true")
        p.add_argument("--socket", help="Incus/LXD unix socket (default: found automatically)")
        _policy_option(p)
        return p

    instance_parser(
        "validate",
        "list every problem of an instance's routed NICs; with --policy alone, check the "
        "policy file",
        target="optional",
    )
    instance_parser("plan", "print what apply would change; change nothing", target="one")
    instance_parser("apply", "converge an instance's host routes and rules", target="one")
    instance_parser("cleanup", "remove an instance's host routes and rules", target="one")
    instance_parser("reconcile", "converge every local instance; resync rules", target="all")
    st = instance_parser(
        "status", "show host tables per instance, device, family", target="optional"
    )
    st.add_argument("--format", choices=("table", "json"), default="table")

    for name, text in (
        ("enable", "attach the LXC hooks to a profile (raw.lxc)"),
        ("disable", "remove the LXC hooks from a profile"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--profile", required=True)
        p.add_argument("--project", default="default")
        p.add_argument("--socket")

    watch = sub.add_parser("watch", help="run the event daemon (and serve the hooks)")
    watch.add_argument("--socket")
    watch.add_argument("--verbose", action="store_true")
    _policy_option(watch)

    doctor = sub.add_parser(
        "doctor",
        help="check the host: forwarding, Incus, daemon, hooks, policy rules, policy file",
        description="One line per check: ok, warn or fail, and what to do. "
        "Exit 0 all ok, 1 warnings, 2 failures.",
    )
    doctor.add_argument("--format", choices=("table", "json"), default="table")
    doctor.add_argument("--socket", help="Incus/LXD unix socket (default: found automatically)")
    _policy_option(doctor)

    hook = sub.add_parser("hook", help="run an LXC hook (called by the hook client)")
    hook.add_argument("type", help="LXC hook type (start-host, post-stop)")
    return parser


def _device(args: argparse.Namespace) -> int:
    from .config import ConfigError, parse_device
    from .engine import Engine, InterfaceMissing
    from .netlink.kernel import ApplyError

    config: dict[str, str] = {}
    for key, value in args.config:
        if key in config:
            print(f"error: {key} given twice", file=sys.stderr)
            return EXIT_USAGE
        config[key] = value
    try:
        intent = parse_device(config)
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_INVALID
    for warning in intent.warnings:
        print(f"warning: {warning}", file=sys.stderr)

    try:
        engine = Engine(rule_priority=args.rule_priority, rp_table=args.rp_table)
    except PermissionError as err:
        print(f"error: netlink: {err}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    try:
        if args.action == "cleanup":
            dp = engine.cleanup(args.host_name, intent)
        else:
            dp = engine.converge(args.host_name, intent, dry_run=args.action == "plan")
    except ConfigError as err:  # valid alone, not on this host (the reverse-path table)
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_INVALID
    except InterfaceMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except ApplyError as err:
        print(f"error: {err}", file=sys.stderr)
        if not err.rolled_back:
            return EXIT_UNDO_FAILED
        # Refused for lack of privilege: the environment, not the change.
        return EXIT_ENVIRONMENT if err.errno in (errno.EPERM, errno.EACCES) else EXIT_APPLY_FAILED
    except PermissionError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    finally:
        engine.close()
    lines = dp.lines() if args.full else dp.summary()
    if args.action == "plan" and not lines:
        lines = ["no changes"]
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


def _hook(args: argparse.Namespace) -> int:
    """The full hook path, used when no daemon answers the hook client."""
    import logging

    from .engine import Engine
    from .hookrun import run_hook

    logging.basicConfig(format="incus-host-tables: %(message)s", level=logging.WARNING)
    hook = args.type or os.environ.get("LXC_HOOK_TYPE", "")
    engine = Engine(rule_priority=args.rule_priority, rp_table=args.rp_table)
    try:
        out = run_hook(
            engine, hook, os.environ.get("LXC_NAME", ""), os.environ.get("LXC_CONFIG_FILE", "")
        )
    finally:
        engine.close()
    if not out.ok:
        print(f"incus-host-tables: {out.error}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def _watch(args: argparse.Namespace) -> int:
    from .daemon import Daemon, log, setup_logging
    from .policy import ACTIVE, PolicyError

    setup_logging(args.verbose)
    ACTIVE.use(args.policy)
    try:
        policy = ACTIVE.load()
    except PolicyError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    if policy is None:
        log.info("no policy file at %s: no tenant restriction", ACTIVE.path)
    else:
        log.info("policy %s in force: %d project(s)", ACTIVE.path, len(policy.projects))
    daemon = Daemon(socket=args.socket, rule_priority=args.rule_priority, rp_table=args.rp_table)
    return daemon.run()


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import exit_code, gather, judge, render
    from .policy import ACTIVE

    ACTIVE.use(args.policy)
    checks = judge(gather(ACTIVE, socket_path=args.socket, rp_table=args.rp_table))
    print(render(checks, args.format))
    return exit_code(checks)


def _load_policy(args: argparse.Namespace) -> tuple[bool, Policy | None]:
    """(usable, policy) of --policy or the default file; a bad file is
    printed, problem by problem."""
    from .policy import ACTIVE, PolicyError

    ACTIVE.use(getattr(args, "policy", None))
    try:
        return True, ACTIVE.load()
    except PolicyError as err:
        for problem in err.problems:
            print(f"error: policy {err.source}: {problem}", file=sys.stderr)
        return False, None


def _kernel_rules() -> KernelRules:
    from .doctor import kernel_policy_rules

    try:
        return kernel_policy_rules()
    except OSError as err:
        print(f"warning: policy rules not checked: {err}", file=sys.stderr)
        return {}


def _instances(args: argparse.Namespace) -> int:
    from . import commands, rawlxc
    from .engine import Engine
    from .incus import IncusClient, IncusError
    from .locking import run_dir

    if args.command not in ("enable", "disable"):
        usable, policy = _load_policy(args)
        if not usable:
            if args.command == "status":
                print(
                    "warning: a running daemon keeps its last good policy; "
                    "violations below are not judged",
                    file=sys.stderr,
                )
            else:
                return EXIT_INVALID  # nothing changed
        if args.command == "validate" and args.instance is None and not args.all_projects:
            if args.policy is None:
                print("error: name an instance, --all-projects, or --policy FILE", file=sys.stderr)
                return EXIT_USAGE
            described = "no such file: no restriction" if policy is None else "valid"
            count = "" if policy is None else f", {len(policy.projects)} project(s)"
            print(f"policy {args.policy}: {described}{count}")
            return EXIT_OK
    try:
        if args.command == "enable":
            from .snap import enable_refusal

            refusal = enable_refusal(args.socket)
            if refusal is not None:
                print(f"error: {refusal}", file=sys.stderr)
                return EXIT_ENVIRONMENT
        client = IncusClient(args.socket)
    except IncusError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    try:
        if args.command in ("enable", "disable"):
            raw = client.profile_config(args.profile, args.project).get("raw.lxc", "")
            new = (
                rawlxc.add_hooks(raw, rawlxc.hook_command(run_dir=run_dir()))
                if args.command == "enable"
                else rawlxc.remove_hooks(raw)
            )
            if new != raw:
                client.set_profile_config(args.profile, "raw.lxc", new, args.project)
            state = "attached to" if args.command == "enable" else "removed from"
            print(f"hooks {state} profile {args.profile}" + ("" if new != raw else " (unchanged)"))
            return EXIT_OK
        snapshots = commands.select(
            client,
            getattr(args, "instance", None),
            args.project,
            getattr(args, "all_projects", False),
        )
        if args.command == "validate":
            return commands.validate(snapshots, policy, _kernel_rules())
        engine = Engine(rule_priority=args.rule_priority, rp_table=args.rp_table)
        try:
            if args.command == "status":
                rows = commands.status(engine, snapshots, policy, _kernel_rules())
                commands.print_status(rows, args.format)
                return EXIT_OK
            return commands.act(engine, snapshots, args.command)
        finally:
            engine.close()
    except IncusError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "device":
        return _device(args)
    if args.command == "hook":
        return _hook(args)
    if args.command == "watch":
        return _watch(args)
    if args.command == "doctor":
        return _doctor(args)
    return _instances(args)
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
