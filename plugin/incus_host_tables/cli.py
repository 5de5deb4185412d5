"""Command line. Imports stay inside the commands: `device` runs in hot
paths and must not pay for pylxd."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from . import streams
from .exitcodes import ExitCode

if TYPE_CHECKING:
    from .commands import KernelRules
    from .config import TableSettings
    from .policy import Policy



RULE_PRIORITY_ENV = "INCUS_HOST_TABLES_RULE_PRIORITY"
RP_TABLE_ENV = "INCUS_HOST_TABLES_RP_TABLE"


class UsageError(Exception):
    """A bad option value found after parsing (an environment variable)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other error; `--help` shows the usage.
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def parse_rule_priority(what: str, text: str) -> int:
    from .numbers import parse_decimal

    # 32766 is the main table's own rule: ours must come before it.
    return parse_decimal(what, text, 1, 32765)


def _resync_interval(text: str) -> int:
    from .numbers import NumberError, parse_decimal

    try:
        return parse_decimal("resync interval", text, 1, 86400)
    except NumberError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_rp_table(what: str, text: str) -> int:
    from .config import MAX_TABLE
    from .model import DEFAULT_TABLE, LOCAL_TABLE, MAIN_TABLE
    from .numbers import NumberError, parse_decimal

    table = parse_decimal(what, text, 1, MAX_TABLE)
    if table in (DEFAULT_TABLE, MAIN_TABLE, LOCAL_TABLE):
        raise NumberError(f"{what} {text!r} is one of the kernel's own tables (253-255)")
    return table


def _option(parse: Callable[[str, str], int], what: str) -> Callable[[str], int]:
    def convert(text: str) -> int:
        from .numbers import NumberError

        try:
            return parse(what, text)
        except NumberError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return convert


def _from_env(value: int | None, parse: Callable[[str, str], int], env: str, default: int) -> int:
    """The option's value, else the environment variable's, else the default."""
    from .numbers import NumberError

    if value is not None:
        return value
    text = os.environ.get(env)
    if text is None:
        return default
    try:
        return parse(f"${env}", text)
    except NumberError as err:
        raise UsageError(str(err)) from None


def _host_name(text: str) -> str:
    from .config import is_interface_name

    if not is_interface_name(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an interface name (1-15 bytes, no '/', ':' or whitespace)"
        )
    return text


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
    from . import __version__
    from .desired import DEFAULT_RULE_PRIORITY
    from .formats import FORMAT_NAMES
    from .model import DEFAULT_RP_TABLE

    parser = _Parser(
        prog="incus-host-tables",
        description="Keep routed NICs' host routes only in the routing tables chosen.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--rule-priority",
        type=_option(parse_rule_priority, "--rule-priority"),
        help="preference of the plugin's policy rules, 1-32765 "
        f"(default {DEFAULT_RULE_PRIORITY}, or ${RULE_PRIORITY_ENV})",
    )
    parser.add_argument(
        "--rp-table",
        type=_option(parse_rp_table, "--rp-table"),
        help="the plugin's reverse-path table, refused as a chosen table "
        f"(default {DEFAULT_RP_TABLE}, or ${RP_TABLE_ENV})",
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
        p.add_argument(
            "--host-name", required=True, type=_host_name, help="host-side interface (vethXXXX)"
        )
        p.add_argument(
            "--full",
            action="store_true",
            help="one line per route even for large plans (default: counts per table "
            "beyond 20 routes of a kind)",
        )
        p.add_argument(
            "--format",
            choices=FORMAT_NAMES,
            default="table",
            help="table (default: one line per change), json, yaml or csv",
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
            p.add_argument("instance", nargs=1)
        else:
            p.add_argument(
                "instance", nargs="*", help="default: every local instance of the project"
            )
            p.add_argument("--all-projects", action="store_true")
        p.add_argument("--project", default="default")
        p.add_argument("--socket", help="Incus/LXD unix socket (default: found automatically)")
        p.add_argument(
            "--format",
            choices=FORMAT_NAMES,
            default="table",
            help="table (default, for people), json, yaml or csv",
        )
        _policy_option(p)
        return p

    instance_parser(
        "validate",
        "list every problem and warning of routed NICs; with --policy alone, check the policy file",
        target="many",
    )
    instance_parser("plan", "print what apply would change; change nothing", target="many")
    instance_parser("apply", "converge an instance's host routes and rules", target="one")
    instance_parser("cleanup", "remove an instance's host routes and rules", target="one")
    rec = instance_parser("reconcile", "converge every local instance; resync rules", target="many")
    rec.add_argument(
        "--dry-run", action="store_true", help="print what would change; change nothing"
    )
    st = instance_parser("status", "show host tables per instance, device, family", target="many")
    st.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if any instance has drift, an error, an isolation or a warning",
    )

    for name, text in (
        ("enable", "attach the LXC hooks to a profile (raw.lxc)"),
        ("disable", "remove the LXC hooks from a profile"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--profile", help="the profile to change")
        which.add_argument(
            "--all-profiles", action="store_true", help="every profile of every project"
        )
        p.add_argument("--project", default="default", help="the profile's project")
        p.add_argument("--socket", help="Incus/LXD unix socket (default: found automatically)")
        if name == "enable":
            p.add_argument(
                "--hook",
                help="hook executable written into raw.lxc "
                "(default $INCUS_HOST_TABLES_HOOK or /usr/libexec/incus-host-tables/hook)",
            )

    text = "install the systemd unit, the hook and the iproute2 names (non-package installs)"
    inst = sub.add_parser("install", help=text, description=text)
    inst.add_argument("--root", default="/", help="directory to install into (default /)")
    inst.add_argument(
        "--executable",
        help="command the unit starts (default: this installation's incus-host-tables)",
    )
    inst.add_argument(
        "--python", help="interpreter of the hook (default: the one running this command)"
    )
    text = "remove the hooks from every profile, then the unit, the hook and the names"
    uninst = sub.add_parser("uninstall", help=text, description=text)
    uninst.add_argument("--root", default="/", help="directory to remove from (default /)")
    uninst.add_argument("--socket", help="Incus/LXD unix socket (default: found automatically)")
    uninst.add_argument(
        "--hooks-only",
        action="store_true",
        help="only remove the hooks from every profile (what the Debian package does on removal)",
    )

    watch = sub.add_parser("watch", help="run the event daemon (and serve the hooks)")
    watch.add_argument("--socket")
    watch.add_argument("--verbose", action="store_true")
    watch.add_argument(
        "--resync-interval",
        type=_resync_interval,
        default=60,
        metavar="SECONDS",
        help="full resync of every managed device and of the rules every SECONDS "
        "(1-86400, default 60); drift is repaired from kernel notifications meanwhile",
    )
    watch.add_argument(
        "--metrics-textfile",
        metavar="PATH",
        help="also write the metrics to PATH (atomically, every 15 s) for "
        "node_exporter's textfile collector",
    )
    _policy_option(watch)

    sub.add_parser(
        "metrics",
        help="print the running daemon's metrics (Prometheus text format)",
        description="print the running daemon's metrics (Prometheus text format)",
    )

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
    hook.add_argument("type", help="LXC hook type (start-host, post-stop, stop)")
    return parser


def _table_settings(args: argparse.Namespace) -> TableSettings:
    from .rttables import host_table_settings

    return host_table_settings(args.rp_table)


def _device(args: argparse.Namespace) -> int:
    from .config import ConfigError, parse_device
    from .engine import Engine, InterfaceMissing
    from .netlink.kernel import ApplyError

    config: dict[str, str] = {}
    for key, value in args.config:
        if key in config:
            print(f"error: {key} given twice", file=sys.stderr)
            return ExitCode.USAGE
        config[key] = value
    try:
        intent = parse_device(config, _table_settings(args))
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return ExitCode.INVALID
    if args.format == "table":
        for warning in intent.warnings:
            print(f"warning: {warning}", file=sys.stderr)

    try:
        engine = Engine(rule_priority=args.rule_priority, rp_table=args.rp_table)
    except PermissionError as err:
        print(f"error: netlink: {err}", file=sys.stderr)
        return ExitCode.ENVIRONMENT
    try:
        if args.action == "cleanup":
            dp = engine.cleanup(args.host_name, intent)
        else:
            dp = engine.converge(args.host_name, intent, dry_run=args.action == "plan")
    except ConfigError as err:  # valid alone, not on this host (the reverse-path table)
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return ExitCode.INVALID
    except InterfaceMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return ExitCode.ENVIRONMENT
    except ApplyError as err:
        print(f"error: {err}", file=sys.stderr)
        if not err.rolled_back:
            return ExitCode.UNDO_FAILED
        # Refused for lack of privilege: the environment, not the change.
        if err.errno in (errno.EPERM, errno.EACCES):
            return ExitCode.ENVIRONMENT
        return ExitCode.APPLY_FAILED
    except PermissionError as err:
        print(f"error: {err}", file=sys.stderr)
        return ExitCode.ENVIRONMENT
    finally:
        engine.close()
    lines = dp.lines() if args.full else dp.summary()
    if args.format != "table":
        from .formats import Format, render

        records = [
            {"interface": args.host_name, "kind": kind, "text": text}
            for kind, texts in (("warning", intent.warnings), ("change", lines))
            for text in texts
        ]
        sys.stdout.write(render(records, Format(args.format), ("interface", "kind", "text")))
        return ExitCode.OK
    if args.action == "plan" and not lines:
        lines = ["no changes"]
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
    return ExitCode.OK


def _hook(args: argparse.Namespace) -> int:
    """The full hook path, used when no daemon answers the hook client."""
    import logging

    from .engine import Engine
    from .hookrun import START_HOOKS, STOP_HOOKS, run_hook
    from .lxcconf import LxcConfError, parse_lxc_name

    logging.basicConfig(format="incus-host-tables: %(message)s", level=logging.WARNING)
    hook = args.type or os.environ.get("LXC_HOOK_TYPE", "")
    if hook not in START_HOOKS + STOP_HOOKS:
        known = ", ".join(START_HOOKS + STOP_HOOKS)
        print(f"incus-host-tables: unsupported hook type {hook!r} ({known})", file=sys.stderr)
        return ExitCode.USAGE
    lxc_name = os.environ.get("LXC_NAME", "")
    if not lxc_name:
        print(
            "incus-host-tables: LXC_NAME is not set: `hook` runs as an LXC hook only",
            file=sys.stderr,
        )
        return ExitCode.ENVIRONMENT
    try:
        parse_lxc_name(lxc_name)
    except LxcConfError as err:
        print(f"incus-host-tables: LXC_NAME: {err}", file=sys.stderr)
        return ExitCode.ENVIRONMENT
    engine = Engine(rule_priority=args.rule_priority, rp_table=args.rp_table)
    try:
        out = run_hook(engine, hook, lxc_name, os.environ.get("LXC_CONFIG_FILE", ""))
    finally:
        engine.close()
    if not out.ok:
        print(f"incus-host-tables: {out.error}", file=sys.stderr)
        return ExitCode.INVALID
    return ExitCode.OK


def _watch(args: argparse.Namespace) -> int:
    from .daemon import Daemon
    from .hookserver import AlreadyRunning
    from .logsetup import setup_logging
    from .policy import ACTIVE, PolicyError

    setup_logging(args.verbose)
    ACTIVE.use(args.policy)
    try:
        ACTIVE.load()  # the daemon logs which policy is in force once it serves
    except PolicyError as err:
        print(f"error: {err}", file=sys.stderr)
        return ExitCode.INVALID
    try:
        daemon = Daemon(
            socket=args.socket,
            rule_priority=args.rule_priority,
            rp_table=args.rp_table,
            resync_interval=args.resync_interval,
            metrics_textfile=args.metrics_textfile,
        )
        return daemon.run()
    except AlreadyRunning as err:
        print(f"error: {err}", file=sys.stderr)
        return ExitCode.ENVIRONMENT


def _metrics(args: argparse.Namespace) -> int:
    from .hookserver import ask_metrics
    from .locking import run_dir

    try:
        text = ask_metrics()
    except OSError as err:
        print(f"error: no daemon answers on {run_dir()}: {err}", file=sys.stderr)
        return ExitCode.ENVIRONMENT
    except ValueError as err:
        print(f"error: the daemon refused: {err}", file=sys.stderr)
        return ExitCode.ENVIRONMENT
    sys.stdout.write(text.decode())
    return ExitCode.OK


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
    import logging

    from . import commands, profiles
    from .engine import Engine
    from .formats import Format
    from .incus import IncusClient, IncusError
    from .locking import run_dir
    from .rttables import SystemTableNames

    # The commands print every warning and error themselves; the lifecycle's
    # log lines are for the daemon's and the hooks' logs.
    logging.getLogger("incus-host-tables").addHandler(logging.NullHandler())
    command = None  # the hook command `enable` writes; checked before Incus is asked
    policy: Policy | None = None
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
                return ExitCode.INVALID  # nothing changed
        if (
            args.command == "validate"
            and args.policy is not None
            and not args.instance
            and not args.all_projects
        ):
            described = "no such file: no restriction" if policy is None else "valid"
            count = "" if policy is None else f", {len(policy.projects)} project(s)"
            print(f"policy {args.policy}: {described}{count}")
            return ExitCode.OK
    try:
        if args.command == "enable":
            from .snap import enable_refusal

            refusal = enable_refusal(args.socket)
            if refusal is not None:
                print(f"error: {refusal}", file=sys.stderr)
                return ExitCode.ENVIRONMENT
            command = profiles.enable_command(
                profiles.hook_path(args.hook),
                run_dir(),
                rp_table=args.rp_table,
                rule_priority=args.rule_priority,
            )
        client = IncusClient(args.socket)
    except (IncusError, profiles.HookMissingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return ExitCode.ENVIRONMENT
    try:
        if args.command in ("enable", "disable"):
            refs = (
                profiles.all_profiles(client)
                if args.all_profiles
                else [(args.project, args.profile)]
            )
            return profiles.apply(client, refs, command)
        snapshots = commands.select(
            client, args.instance, args.project, getattr(args, "all_projects", False)
        )
        fmt = Format(args.format)
        tables = _table_settings(args)
        if args.command == "validate":
            return commands.validate(snapshots, tables, fmt, policy, _kernel_rules())
        engine = Engine(rule_priority=args.rule_priority, rp_table=args.rp_table)
        try:
            if args.command == "status":
                rows = commands.status(
                    engine, snapshots, tables, SystemTableNames(), policy, _kernel_rules()
                )
                commands.print_status(rows, fmt)
                if args.check and not all(row.fine for row in rows):
                    return ExitCode.INVALID
                return ExitCode.OK
            return commands.act(
                engine,
                snapshots,
                args.command,
                tables=tables,
                dry_run=getattr(args, "dry_run", False),
                fmt=fmt,
            )
        finally:
            engine.close()
    except IncusError as err:
        print(f"error: {err}", file=sys.stderr)
        return ExitCode.ENVIRONMENT
    finally:
        client.close()


def _run(args: argparse.Namespace) -> int:
    from .desired import DEFAULT_RULE_PRIORITY
    from .model import DEFAULT_RP_TABLE

    args.rule_priority = _from_env(
        args.rule_priority, parse_rule_priority, RULE_PRIORITY_ENV, DEFAULT_RULE_PRIORITY
    )
    args.rp_table = _from_env(args.rp_table, parse_rp_table, RP_TABLE_ENV, DEFAULT_RP_TABLE)
    if args.command == "device":
        return _device(args)
    if args.command == "hook":
        return _hook(args)
    if args.command == "watch":
        return _watch(args)
    if args.command == "install":
        from . import hostsetup

        return hostsetup.install(args.root, args.executable, args.python)
    if args.command == "uninstall":
        from . import hostsetup

        return hostsetup.uninstall(args.root, args.socket, args.hooks_only)
    if args.command == "metrics":
        return _metrics(args)
    if args.command == "doctor":
        return _doctor(args)
    return _instances(args)


def main(argv: Sequence[str] | None = None) -> int:
    streams.keep_quiet_when_closed()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except UsageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return ExitCode.ENVIRONMENT
    except OSError as err:
        # The run directory, netlink, a socket: the environment, not the input.
        print(f"error: {err}", file=sys.stderr)
        return ExitCode.ENVIRONMENT


if __name__ == "__main__":
    sys.exit(main())
