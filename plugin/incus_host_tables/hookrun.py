"""The work behind the LXC hooks, and how a refusal reaches the operator.

Runs inside the daemon (fast path) or in the hook's own process when no
daemon answers. Incus shows neither the hook's stderr nor its exit reason in
`incus start` or `incus info --show-log`, so a refusal is also written into
the instance's lxc.log, the system log, and the problem store (`status`).
"""

from __future__ import annotations

import logging
import syslog
import time

from .engine import Engine
from .lifecycle import Lifecycle, Outcome
from .lxcconf import LxcConfError, lxc_log_path, parse_lxc_name, routed_nics_for_hook

log = logging.getLogger("incus-host-tables")

START_HOOKS = ("start-host",)
STOP_HOOKS = ("post-stop", "stop")


def run_hook(engine: Engine, hook: str, lxc_name: str, lxc_config_file: str) -> Outcome:
    project, name = parse_lxc_name(lxc_name)
    lifecycle = Lifecycle(engine, source=f"hook {hook}")
    try:
        nics = routed_nics_for_hook(lxc_config_file)
    except (OSError, LxcConfError) as err:
        out = Outcome(project, name, hook, error=f"cannot read the instance's config: {err}")
        if hook in START_HOOKS:
            report_refusal(out, lxc_config_file)
        return out
    if hook in START_HOOKS:
        out = lifecycle.start(project, name, nics)
        if not out.ok:
            report_refusal(out, lxc_config_file)
        return out
    if hook in STOP_HOOKS:
        return lifecycle.stop(project, name, nics)
    return Outcome(project, name, hook, error=f"unsupported hook type {hook!r}")


def report_refusal(out: Outcome, lxc_config_file: str) -> None:
    message = f"incus-host-tables: refusing to start {out.project}/{out.name}: {out.error}"
    log.error("%s", message)
    try:
        syslog.openlog("incus-host-tables", 0, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_ERR, message)
    except OSError:
        pass
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    try:
        path = lxc_log_path(lxc_config_file)
        if path is None:
            return
        # Same line shape as LXC's own, so it reads naturally in the log.
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"lxc {out.name} {stamp} ERROR    incus-host-tables - {message}\n")
    except OSError as err:
        log.warning("cannot write the instance's lxc.log: %s", err)
