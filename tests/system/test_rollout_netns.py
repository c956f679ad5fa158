"""Rollouts on several hosts, each a Linux network namespace (tests/netns.py): two app hosts
running ``gateway serve`` and a PostgreSQL host. Both hosts apply each step within 2 s; the
judge's advisory lock moves to the other host when the judging one is killed; a database
cut off freezes the rollout where it is and fails no request."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.migration.rollout import act
from gateway.migration.rollout_store import Store
from gateway.migration.rules import parse_gateway_file
from tests.apps.shop import ROLLOUT as SHOP
from tests.netns import DB_NAME, DB_PASSWORD, DB_USER, Instance, Lan, NetnsPostgres, remove_leftovers
from tests.support import GATEWAY, server_env, until

INITDB = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
pytestmark = [pytest.mark.server, pytest.mark.skipif(not INITDB, reason="no PostgreSQL's initdb")]

APPLIED_WITHIN = 2.0  # seconds: every host serves a new step within this
SPEC = parse_gateway_file(SHOP).routes[0]


@dataclass
class Hosts:
    lan: Lan
    postgres: NetnsPostgres
    instances: dict[str, Instance]

    def share_on(self, host: str) -> str | None:
        """The canary share a host serves now, as its migration page says (its memory, not the database)."""
        page = self.lan.on("client", httpx.get, f"{self.instances[host].url}/_gateway/", timeout=10).text
        start = page.find("new: ")
        return page[start + 5:page.index("%", start)] if start >= 0 else None

    def judge(self) -> str | None:
        """The host whose session holds the judge's advisory lock."""
        rows = self.postgres.execute("SELECT host(a.client_addr) FROM pg_locks l JOIN pg_stat_activity a "
                                     "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                                     f"AND a.datname = '{DB_NAME}'")
        holders = {host for host, instance in self.instances.items() for (address,) in rows
                   if address == instance.address}
        return holders.pop() if len(holders) == 1 else None


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    remove_leftovers()
    lan = Lan(("client", "app1", "app2", "db"), first=60)
    try:
        try:
            lan.create()
        except PermissionError as exc:
            pytest.skip(f"ip netns is not permitted here: {exc}")
        pgroot = lan.tmp / "postgres"
        pgroot.mkdir()
        if os.geteuid() == 0:
            shutil.chown(pgroot, "postgres", "postgres")
        postgres = NetnsPostgres(lan, Path(INITDB[-1]).parent, pgroot, [lan.address["app1"], lan.address["app2"]])
        lan.at_close(postgres.kill)
        postgres.execute(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'")
        postgres.execute(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
        config = tmp_path_factory.mktemp("rollout-netns") / "gateway.toml"
        config.write_text(SHOP)
        instances: dict[str, Instance] = {}
        for host in ("app1", "app2"):
            directory = lan.tmp / host
            directory.mkdir()
            env = server_env(directory, DATABASE_URL=postgres.lan_url(), GATEWAY_TRUSTED_PROXIES=lan.address["client"],
                             GATEWAY_ALLOWED_HOSTS=f"{lan.address['app1']},{lan.address['app2']}")
            instances[host] = Instance(lan, host, [*GATEWAY, "serve", "--host", lan.address[host], "--port",
                                                   str(8001 if host == "app1" else 8002), "--config", str(config)],
                                       env, directory / "gateway.log")
            lan.at_close(instances[host].stop)
        yield Hosts(lan, postgres, instances)
    finally:
        errors = lan.close()
        assert not errors, f"cleaning up the hosts failed: {errors}"


def wait_until(what: Callable[[], bool], within: float, message: Callable[[], str]) -> None:
    until(what, within, message, interval=0.05)


def promote(hosts: Hosts) -> None:
    with Store(hosts.postgres.url(DB_NAME)) as store:
        act(store, SPEC, "promote", actor="netns test", reason="next step")


def test_both_hosts_apply_each_step_within_2_s(hosts: Hosts) -> None:
    wait_until(lambda: hosts.share_on("app1") == hosts.share_on("app2") == "10", 30,
               lambda: f"the first step: {hosts.share_on('app1')}, {hosts.share_on('app2')}")
    for share in ("50", "100"):
        promote(hosts)
        started = time.monotonic()
        applied = {}
        while len(applied) < 2 and time.monotonic() - started < 10:
            for host in ("app1", "app2"):
                if host not in applied and hosts.share_on(host) == share:
                    applied[host] = time.monotonic() - started
        assert set(applied) == {"app1", "app2"} and max(applied.values()) <= APPLIED_WITHIN, (share, applied)


def test_judging_moves_to_the_other_host_when_the_judge_is_killed(hosts: Hosts) -> None:
    wait_until(lambda: hosts.judge() is not None, 10, lambda: "no host holds the judge's lock")
    judge = hosts.judge()
    assert judge is not None
    other = "app2" if judge == "app1" else "app1"
    os.kill(hosts.instances[judge].proc.pid, signal.SIGKILL)
    hosts.instances[judge].proc.wait(10)
    wait_until(lambda: hosts.judge() == other, 15, lambda: f"the lock's holder: {hosts.judge()}")


def test_a_database_cut_off_freezes_the_rollout_and_fails_no_request(hosts: Hosts) -> None:
    host = next(h for h, instance in hosts.instances.items() if instance.proc.poll() is None)
    url = hosts.instances[host].url
    before = hosts.share_on(host)
    statuses = []

    def cart(i: int) -> int:
        return httpx.get(f"{url}/shop/cart", headers={"Cookie": f"gateway_canary={i:032x}"}, timeout=10).status_code

    hosts.lan.cut("db")
    try:
        cut_until = time.monotonic() + 12  # past the keepalives' 9 s: the instance sees the database gone
        i = 0
        while time.monotonic() < cut_until:
            statuses.append(hosts.lan.on("client", cart, i))
            i += 1
        assert hosts.share_on(host) == before  # frozen where it was
    finally:
        hosts.lan.mend("db")
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    wait_until(lambda: "Rollouts resume" in hosts.instances[host].log, 30, lambda: hosts.instances[host].log[-2000:])
    assert "Rollouts frozen where they are" in hosts.instances[host].log
    with Store(hosts.postgres.url(DB_NAME)) as store:
        act(store, SPEC, "rollback", actor="netns test", reason="after the cut")
    wait_until(lambda: hosts.share_on(host) == "0", APPLIED_WITHIN + 1, lambda: f"{hosts.share_on(host)}")
