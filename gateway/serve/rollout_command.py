"""``gateway rollout status|pause|resume|promote|rollback [RULE]``: a rollout's state, and a
person's say over it, on every instance at once through the site's database
(:mod:`gateway.migration.rollout`). Every change goes into the audit trail with who made
it and why (``--by``, ``--reason``)."""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Iterable

import click

from gateway.core.config import Config
from gateway.migration.rollout import act
from gateway.migration.rollout_store import BASELINE, CANARY, Audit, State, Store, database_url
from gateway.migration.rules import RouteSpec

ACTIONS = ("status", "pause", "resume", "promote", "rollback")


def actor_name() -> str:
    """Who runs the command: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def find_rule(specs: Iterable[RouteSpec], rule: str) -> RouteSpec:
    """The rule with a rollout that ``rule`` names (its path rule, or its key)."""
    rolled = [spec for spec in specs if spec.rollout is not None]
    found = [spec for spec in rolled if rule in (spec.rule, spec.key)]
    if len(found) == 1:
        return found[0]
    if found:
        raise click.ClickException(f"{rule} names {len(found)} rules (by their methods): give one of "
                                   + ", ".join(repr(spec.key) for spec in found) + ".")
    known = ", ".join(spec.rule for spec in rolled) or "none in this gateway.toml"
    raise click.ClickException(f"no rule {rule!r} has a rollout: rules with one: {known}.")


def run(config: Config, action: str, rule: str | None, *, reason: str, actor: str | None) -> None:
    """Run one ``gateway rollout`` command."""
    import os

    specs = [spec for spec in config.file.routes if spec.rollout is not None]
    if not specs:
        raise click.ClickException("no rule of this gateway.toml has a rollout ([route.rollout], "
                                   "docs/rollouts.md).")
    chosen = [find_rule(specs, rule)] if rule is not None else specs
    if action != "status" and rule is None:
        raise click.UsageError(f"gateway rollout {action} needs the RULE it acts on, e.g. "
                               f"gateway rollout {action} {specs[0].rule}")
    with Store(database_url(config.data_dir, os.environ)) as store:
        try:
            if action == "status":
                for spec in chosen:
                    click.echo("\n".join(status(store, spec, trail=rule is not None)))
                return
            state = act(store, chosen[0], action, actor=actor or actor_name(), reason=reason)
        except ValueError as exc:
            raise click.ClickException(f"{chosen[0].rule}: {exc}.") from None
        except Exception as exc:  # any driver's error: say which database, in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise click.ClickException(f"cannot reach the rollouts' database ({store.where}): {first}") from None
    click.echo(f"{chosen[0].rule}: {state.status}, canary {chosen[0].canary} at {state.share:g}% of clients "
               "(every instance applies it within a second).")


def status(store: Store, spec: RouteSpec, *, trail: bool) -> list[str]:
    """A rule's rollout in a few lines: its step, the arms' counts, and its audit trail."""
    rollout = spec.rollout
    assert rollout is not None
    state = store.states((spec.key,)).get(spec.key)
    steps = ", ".join(f"{s:g}" for s in rollout.steps)
    if state is None:
        return [f"{spec.rule}: not started (no instance has served it yet); steps {steps}%."]
    lines = [f"{spec.rule}: {state.status}, {_where(state, rollout.steps)}, canary {spec.canary} at "
             f"{state.share:g}% of clients since {_when(state.since)}; steps {steps}%"
             + (f"; handed over to {state.owner}" if state.owner else "") + "."]
    arms, (equal, compared) = store.tallies(spec.key, state.epoch)
    for arm in (BASELINE, CANARY):
        counted = arms.get(arm)
        if counted is None or not counted.requests:
            lines.append(f"  {arm}: no requests on this step")
            continue
        lines.append(f"  {arm}: {counted.requests} requests, {100 * counted.error_rate:.2f}% 5xx, median "
                     f"{1000 * counted.quantile(0.5):.1f} ms, p99 {1000 * counted.quantile(0.99):.1f} ms")
    if spec.shadow is not None:
        lines.append(f"  shadow: {equal} of {compared} comparisons equal")
    if trail:
        lines.append("  audit trail:")
        lines.extend(f"    {_audit(line)}" for line in store.audit(spec.key, last=20))
    return lines


def _where(state: State, steps: tuple[float, ...]) -> str:
    return "no step" if state.step < 0 else f"step {state.step + 1} of {len(steps)}"


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _audit(line: Audit) -> str:
    move = "" if line.from_share is None else f"{line.from_share:g}% -> "
    return f"{_when(line.at)} {line.actor} {line.action} {move}{line.to_share:g}%: {line.reason}"
