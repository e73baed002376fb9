"""The twin check's state machine: one Hypothesis machine, two worlds, compared per step.

Each example begins from the deployment as it is *now*: the twin is rebuilt
from the deployment's snapshot (:func:`cockpit_api.twin.snapshot_of`, then
:func:`cockpit_api.twin.worlds.twin_scenario`),
so Hypothesis can replay shorter sequences while it shrinks a divergence
without anything to reset on the deployment. A step sends the same request to
both worlds (the deployment first), then compares:

- the answers: status, problem ``code``, the body's shape (keys, types,
  null-ness) and what must agree in it (a VM's status, host, persistence,
  busy-ness; a job's status, hosts, flags, whether it has an error);
- after a write, the settled state: the twin's clock runs until nothing is
  due; the deployment is polled until it shows the same canary VMs, hosts and
  job end states, within the time band (twin x (1 +- band) + slack);
- the change feed's events of the step for the canaries and this run's jobs
  (types and order, coalesced to each resource's last event, as
  tests/test_differential.py does: libvirt reports states on the way).

A divergence not explained by the known-differences file raises
:class:`Diverged` from one place (Hypothesis shrinks one failure, not many);
the shortest sequence that diverged is kept in :class:`Result`.
The comparisons themselves (answers, settled views, feeds) are in
:mod:`cockpit_api.twin.compare`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, assume, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import Flaky
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from cockpit_api.twin.compare import (
    FINAL,
    Divergence,
    Json,
    Side,
    compare_answers,
)
from cockpit_api.twin.worlds import (
    Answer,
    Deployment,
    Known,
    Options,
    TimeUp,
    World,
    snapshot_of,
    twin_scenario,
)

ACTIONS = ("start", "stop", "restart", "suspend", "resume")


@dataclass(slots=True)
class Failure:
    divergences: list[Divergence]
    steps: list[str]  # the sequence that diverged, its last step the diverging one
    index: int


@dataclass(slots=True)
class Result:
    steps: int = 0
    examples: int = 0
    tries: int = 0
    requests: int = 0
    renewals: int = 0
    failure: Failure | None = None
    known: list[tuple[Known, Divergence]] = field(default_factory=list)
    times: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    stopped: str | None = None
    real_jobs: list[str] = field(default_factory=list)
    initial: dict[str, Json | None] | None = None  # the canaries when the run began

    def failed(self, failure: Failure) -> None:
        """Keep the shortest diverging sequence (shrinking may be cut short by the budget)."""
        if self.failure is None or len(failure.steps) <= len(self.failure.steps):
            self.failure = failure


class Diverged(AssertionError):
    pass


# --------------------------------------------------------------------------- the machine


def build_machine(deployment: Deployment, make_twin: Callable[[Json], World],
                  canaries: list[str], opts: Options, result: Result,
                  first: Json | None = None) -> type[RuleBasedStateMachine]:
    """A machine class over these worlds (Hypothesis instantiates it once per example).
    ``first``: the deployment's snapshot if the caller has just taken one."""
    scenario0 = twin_scenario(first if first is not None else snapshot_of(deployment.api),
                              opts.known.guests)
    hosts = [h["id"] for h in scenario0["hosts"]]
    every_vm = [v["id"] for v in scenario0["vms"]]
    names = {v["id"]: v["name"] for v in scenario0["vms"]}
    hostnames = {h["id"]: h["hostname"] for h in scenario0["hosts"]}
    band, slack = opts.band, opts.slack
    # The kinds of step, writes first (a shrunk step prefers the first kind, and the
    # first value of each argument).
    ARGUMENTS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
        "act": {"vm": st.sampled_from(canaries), "action": st.sampled_from(ACTIONS),
                "force": st.booleans()},
        "migrate": {"vm": st.sampled_from(canaries), "dest": st.sampled_from(hosts),
                    "live": st.booleans(), "persistent": st.booleans(),
                    "undefine_source": st.booleans(),
                    "copy_storage": st.sampled_from(("none", "all", "inc")),
                    "cancel": st.booleans()},
        "wait": {"seconds": st.sampled_from((1.0, 3.0, 6.0))},
        "job": {"which": st.integers(0, 1000), "cancel": st.booleans()},
        "dry_run_action": {"vm": st.sampled_from(every_vm), "action": st.sampled_from(ACTIONS),
                           "force": st.booleans()},
        "dry_run_migrate": {"vm": st.sampled_from(every_vm), "dest": st.sampled_from(hosts)},
        "read_vm": {"vm": st.sampled_from(canaries)},
        "read_host": {"host": st.sampled_from(hosts)},
    }
    # Drawn from with these weights (repeats): writes are what the check is for.
    KINDS = ("act",) * 4 + ("migrate",) * 4 + ("wait", "job", "dry_run_action",
                                                "dry_run_migrate", "read_vm", "read_host")

    class TwinCheck(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            result.tries += 1
            self.first = result.tries == 1
            self.log: list[str] = []
            self.started = False

        def _start(self) -> None:
            """At the first step: a twin of the deployment as it is now."""
            # Hypothesis tries the simplest example first (every choice its minimum: the
            # same read, N times). Against a deployment each example costs real time, so
            # that one is skipped after its first draw; the run is the next, from the seed.
            assume(not self.first)
            if self.started:
                return
            self.started = True
            if result.initial is None:
                result.initial = {vm: _vm(deployment, vm) for vm in canaries}
            else:
                # A replay (shrinking): back to where the run began, so that a shorter
                # sequence meets the same cluster and its divergence reproduces.
                restore(deployment, result.initial, hosts, result)
            result.examples += 1
            self.real = Side(deployment, canaries)
            self.twin = Side(make_twin(twin_scenario(snapshot_of(deployment.api),
                                                     opts.known.guests)), canaries)
            self.real.view()
            self.twin.view()

        def teardown(self) -> None:
            result.requests = deployment.api.requests
            result.renewals = deployment.api.renewals

        # ---- the one step procedure

        def _step(self, kind: str, desc: str,
                  send: Callable[[Side], list[Answer]], writes: bool = True) -> None:
            self._start()
            self.log.append(desc)
            result.steps += 1
            # Times run from each world's answer: libvirt's own call takes real time (a
            # QEMU start ~0.3 s, seconds on a loaded host) that the simulator answers at
            # once; what the band compares is the time the change then takes to settle.
            real = send(self.real)
            t_real = deployment.mark()
            twin = send(self.twin)
            t_twin = self.twin.world.mark()
            found: list[Divergence] = []
            for a, b in zip(real, twin, strict=True):
                found += compare_answers(desc, a, b)
            if writes and not found:
                found += self._settle(kind, desc, t_real, t_twin)
            self._verdict(found)

        def _settle(self, kind: str, desc: str, t_real: float, t_twin: float) -> list[Divergence]:
            self.twin.world.settle(opts.horizon)
            want = self.twin.view()
            twin_s = self.twin.world.elapsed_since(t_twin)
            lo, hi = twin_s * (1 - band) - slack, twin_s * (1 + band) + slack
            got = self.real.view()
            # Past the band, keep looking a while: "the same, but late" is a timing
            # divergence, "never the same" a state one.
            give_up = time.monotonic() + hi + max(10.0, hi) - deployment.elapsed_since(t_real)
            while got != want and time.monotonic() < give_up:
                deployment.api.pacer.sleep(0.05)
                got = self.real.view()
            real_s = deployment.elapsed_since(t_real)
            result.times.setdefault(kind, []).append((real_s, twin_s))
            found = []
            if got != want:
                for key in sorted(set(got) | set(want)):
                    if got.get(key) != want.get(key):
                        found.append(Divergence(desc, f"settled {self._name(key)}",
                                                got.get(key), want.get(key)))
                return found
            if not lo <= real_s <= hi:
                found.append(Divergence(desc, "time to settle (s)", round(real_s, 2),
                                        f"{twin_s:.2f} (band {max(lo, 0):.2f}-{hi:.2f})"))
            fa, fb = self.real.feed(), self.twin.feed()
            if fa is not None and fb is not None and fa != fb:
                found.append(Divergence(desc, "feed events", fa, fb))
            return found

        def _name(self, key: str) -> str:
            kind, _, ident = key.partition(" ")
            return f"{kind} {names.get(ident, ident)}"

        def _verdict(self, found: list[Divergence]) -> None:
            unknown = []
            for d in found:
                k = opts.known.explain(d.step, d.what)
                if k is None:
                    unknown.append(d)
                else:
                    result.known.append((k, d))
            if unknown:
                result.failed(Failure(unknown, list(self.log), len(self.log) - 1))
                raise Diverged("; ".join(f"{d.what}: {d.real!r} != {d.twin!r}" for d in unknown))

        # ---- rules

        def _vm(self, side: Side, vm: str) -> Json | None:
            r = side.world.api.get(f"/vms/{vm}")
            return r.body if r.status == 200 else None

        # ---- rules: one, drawing the kind of step first. Not a rule per kind: Hypothesis
        # runs each example on a random subset of a machine's rules (swarm testing), and
        # one example is all a deployment's time allows: every kind must be in it.

        @rule(data=st.data())
        def step(self, data: st.DataObject) -> None:
            kind = data.draw(st.sampled_from(KINDS), label="kind")
            draw = {name: data.draw(strategy, label=name)
                    for name, strategy in ARGUMENTS[kind].items()}
            getattr(self, kind)(**draw)

        def act(self, vm: str, action: str, force: bool) -> None:
            self._start()
            now = self._vm(self.twin, vm)
            if now is None or (action == "stop" and not now["persistent"]):
                return  # never make a canary vanish (a transient VM that stops is gone)
            body = {"action": action, "force": force}
            self._step(f"{action}{' force' if force else ''}",
                       f"POST /vms/{vm}/action {json.dumps(body)}  # {names.get(vm, vm)}",
                       lambda s: [s.world.api.call("POST", f"/vms/{vm}/action", json=body)])

        def migrate(self, vm: str, dest: str, live: bool, persistent: bool,
                    undefine_source: bool, copy_storage: str, cancel: bool) -> None:
            body = {"destination_host_id": dest, "live": live, "persistent": persistent,
                    "undefine_source": undefine_source, "copy_storage": copy_storage}

            def send(s: Side) -> list[Answer]:
                r = s.world.api.call("POST", f"/vms/{vm}/migrate", json=body)
                answers = [r]
                if r.status == 202:
                    s.jobs.append(r.body["migration_id"])
                    if s is self.real:
                        result.real_jobs.append(r.body["migration_id"])
                    if cancel:
                        answers.append(s.world.api.call(
                            "POST", f"/migrations/{r.body['migration_id']}/cancel"))
                return answers

            then = " then POST /migrations/{id}/cancel" if cancel else ""
            self._step("migrate and cancel" if cancel else "migrate",
                       f"POST /vms/{vm}/migrate {json.dumps(body)}{then}  "
                       f"# {names.get(vm, vm)} to {hostnames.get(dest, dest)}", send)

        def dry_run_action(self, vm: str, action: str, force: bool) -> None:
            body = {"action": action, "force": force}
            self._step("dry run", f"POST /vms/{vm}/action?dry_run=true {json.dumps(body)}  "
                       f"# {names.get(vm, vm)}",
                       lambda s: [s.world.api.call("POST", f"/vms/{vm}/action", json=body,
                                                   params={"dry_run": "true"})], writes=False)

        def dry_run_migrate(self, vm: str, dest: str) -> None:
            body = {"destination_host_id": dest}
            self._step("dry run", f"POST /vms/{vm}/migrate?dry_run=true {json.dumps(body)}  "
                       f"# {names.get(vm, vm)} to {hostnames.get(dest, dest)}",
                       lambda s: [s.world.api.call("POST", f"/vms/{vm}/migrate", json=body,
                                                   params={"dry_run": "true"})], writes=False)

        def read_vm(self, vm: str) -> None:
            self._step("read", f"GET /vms/{vm}  # {names.get(vm, vm)}",
                       lambda s: [s.world.api.get(f"/vms/{vm}")], writes=False)

        def read_host(self, host: str) -> None:
            def send(s: Side) -> list[Answer]:
                r = s.world.api.get(f"/hosts/{host}")
                # Counts and cursors move with every VM of the host, canary or not.
                body = {"status": r.body.get("status"), "id": r.body.get("id")} \
                    if r.status == 200 else r.body
                return [Answer(r.status, body, r.headers)]

            self._step("read", f"GET /hosts/{host}  # {hostnames.get(host, host)}", send,
                       writes=False)

        def job(self, which: int, cancel: bool) -> None:
            self._start()
            if not self.real.jobs or len(self.real.jobs) != len(self.twin.jobs):
                return
            i = which % len(self.real.jobs)

            def send(s: Side) -> list[Answer]:
                job = s.jobs[i]
                if cancel:
                    return [s.world.api.call("POST", f"/migrations/{job}/cancel")]
                return [s.world.api.get(f"/migrations/{job}")]

            what = "POST /migrations/{id}/cancel" if cancel else "GET /migrations/{id}"
            self._step("read", f"{what}  # job #{i + 1} of this run", send, writes=cancel)

        def wait(self, seconds: float) -> None:
            def send(s: Side) -> list[Answer]:
                s.world.pass_time(seconds)
                return []

            self._step("wait", f"wait {seconds:g} s", send)

    return TwinCheck


def check(deployment: Deployment, make_twin: Callable[[Json], World], canaries: list[str],
          opts: Options, result: Result, first: Json | None = None) -> None:
    """Run the machine: one generated example of ``opts.steps`` steps, shrunk if it diverges."""
    machine = build_machine(deployment, make_twin, canaries, opts, result, first)
    machine = hypothesis_seed(opts.seed)(machine)
    config = settings(max_examples=1, stateful_step_count=opts.steps, database=None,
                      deadline=None, phases=[Phase.generate, Phase.shrink],
                      suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                      print_blob=False, verbosity=Verbosity.quiet)
    try:
        run_state_machine_as_test(machine, settings=config)
    except Diverged:
        pass  # the shortest diverging sequence is in result.failure
    except TimeUp as exc:
        # Spent while shrinking too: the shortest diverging sequence so far is the report.
        result.stopped = str(exc)
    except Flaky:
        # The shortest sequence did not diverge again when replayed last: a deployment's
        # timing varies. The report keeps the shortest sequence that did diverge.
        if result.failure is None:
            raise
        result.stopped = ("the shrunk sequence did not diverge on its last replay (timing "
                          "on the deployment varies): it is the shortest that diverged")


def _vm(deployment: Deployment, vm: str) -> Json | None:
    r = deployment.api.get(f"/vms/{vm}")
    return r.body if r.status == 200 else None


def _wait_job(deployment: Deployment, job: str, timeout: float = 120.0) -> str | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = deployment.api.get(f"/migrations/{job}")
        if r.status != 200:
            return None
        if r.body["status"] in FINAL:
            return str(r.body["status"])
        deployment.api.pacer.sleep(0.1)
    return None


def _cancel_open(deployment: Deployment, result: Result) -> None:
    for job in result.real_jobs:
        r = deployment.api.get(f"/migrations/{job}")
        if r.status == 200 and r.body["status"] not in FINAL:
            deployment.api.call("POST", f"/migrations/{job}/cancel")
            _wait_job(deployment, job)


def restore(deployment: Deployment, initial: dict[str, Json | None], hosts: list[str],
            result: Result) -> None:
    """Put each canary back on its first host, persistence and power state (best effort:
    a transient VM that vanished, or stale definitions, cannot come back)."""
    api = deployment.api
    _cancel_open(deployment, result)

    def act(vm: str, action: str, force: bool = False) -> None:
        api.call("POST", f"/vms/{vm}/action", json={"action": action, "force": force})

    def move(vm: str, dest: str, persistent: bool) -> None:
        r = api.call("POST", f"/vms/{vm}/migrate", json={
            "destination_host_id": dest, "persistent": persistent, "undefine_source": True})
        if r.status == 202:
            _wait_job(deployment, r.body["migration_id"])

    for vm, first in initial.items():
        now = _vm(deployment, vm)
        if first is None or now is None:
            continue
        if now["host_id"] != first["host_id"] or now["persistent"] != first["persistent"]:
            if now["status"] in ("shutoff", "crashed", "nostate"):
                act(vm, "start")
            if now["host_id"] == first["host_id"]:  # persistence only: by way of another
                other = next((h for h in hosts if h != first["host_id"]), None)
                if other is not None:
                    move(vm, other, True)
            move(vm, first["host_id"], first["persistent"])
            now = _vm(deployment, vm) or now
        want, have = first["status"], now["status"]
        if want == have:
            continue
        if want == "shutoff" and first["persistent"]:
            act(vm, "stop", force=True)
        elif want in ("running", "paused"):
            if have in ("shutoff", "crashed", "nostate"):
                act(vm, "start")
                have = "running"
            if want == "running" and have == "paused":
                act(vm, "resume")
            elif want == "paused" and have != "paused":
                act(vm, "suspend")


def leave_settled(deployment: Deployment, canaries: list[str], result: Result,
                  timeout: float = 120.0) -> dict[str, str]:
    """Cancel this run's unfinished jobs, wait for them to end, and say where each canary is."""
    api = deployment.api
    api.pacer.deadline = None  # the budget never stops the clean-up
    for job in result.real_jobs:
        r = api.get(f"/migrations/{job}")
        if r.status == 200 and r.body["status"] not in FINAL:
            api.call("POST", f"/migrations/{job}/cancel")
    end = time.monotonic() + timeout
    for job in result.real_jobs:
        while time.monotonic() < end:
            r = api.get(f"/migrations/{job}")
            if r.status != 200 or r.body["status"] in FINAL:
                break
            api.pacer.sleep(0.2)
    hosts, _ = api.all("/hosts", "hosts")
    hostnames = {h["id"]: h["hostname"] for h in hosts}
    out = {}
    for vm in canaries:
        r = api.get(f"/vms/{vm}")
        if r.status == 200:
            v = r.body
            out[vm] = (f"{v['status']} on {hostnames.get(v['host_id'], v['host_id'])}"
                       f"{'' if v['persistent'] else ' (transient)'}"
                       f"{', migrating' if v['migration_id'] else ''}")
        else:
            out[vm] = f"HTTP {r.status} {r.code or ''}".strip()
    return out


# --------------------------------------------------------------------------- fault scripts


def host_lost_mid_migration(deployment: Deployment, twin: World, vm: str, dest: str,
                            lose: Callable[[bool], None], timeout: float = 60.0,
                            ) -> tuple[list[Divergence], dict[str, Any]]:
    """The same fault on both: ``vm`` migrating to ``dest`` when ``dest`` is lost.

    ``lose(True)`` makes the deployment lose the host (the lab kills its daemon),
    ``lose(False)`` brings it back; the twin's host is disconnected and reconnected
    through its control plane. Compared: the migration's answer, the job's end state
    (and that it has an error), the VM's place and state, the host's status, the
    answer to another migration to the lost host, and the VM once the host is back.
    """
    real, sim = Side(deployment, [vm]), Side(twin, [vm])
    found: list[Divergence] = []
    seen: dict[str, Any] = {}

    def both(desc: str, call: Callable[[Side], Answer]) -> tuple[Answer, Answer]:
        a, b = call(real), call(sim)
        found.extend(compare_answers(desc, a, b))
        return a, b

    def poll(side: Side, ok: Callable[[], bool]) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ok():
                return True
            side.world.api.pacer.sleep(0.1)
        return False

    def job(side: Side) -> Json:
        body: Json = side.world.api.get(f"/migrations/{side.jobs[0]}").body
        return body

    def host(side: Side) -> str:
        return str(side.world.api.get(f"/hosts/{dest}").body["status"])

    body = {"destination_host_id": dest}
    a, b = both("migrate", lambda s: s.world.api.call("POST", f"/vms/{vm}/migrate", json=body))
    if a.status != 202 or b.status != 202:
        return found, seen
    real.jobs.append(a.body["migration_id"])
    sim.jobs.append(b.body["migration_id"])
    poll(real, lambda: job(real)["status"] == "running")
    twin.pass_time(0.55)  # past the simulator's setup (0.5 s), not the copy's end
    seen["running"] = (job(real)["status"], job(sim)["status"])
    lose(True)
    twin.lose_host(dest, True)
    try:
        poll(real, lambda: job(real)["status"] in FINAL)
        twin.settle(600)
        ja, jb = job(real), job(sim)
        seen["job"] = (ja["status"], jb["status"], ja["error"], jb["error"])
        if (ja["status"], ja["error"] is not None) != (jb["status"], jb["error"] is not None):
            found.append(Divergence("host lost mid-migration", "job end state",
                                    (ja["status"], ja["error"]), (jb["status"], jb["error"])))
        poll(real, lambda: host(real) == "disconnected")
        seen["host"] = (host(real), host(sim))
        if seen["host"][0] != seen["host"][1]:
            found.append(Divergence("host lost mid-migration", "lost host", *seen["host"]))
        va, vb = real.view(), sim.view()
        key = f"vm {vm}"
        if va.get(key) != vb.get(key):
            found.append(Divergence("host lost mid-migration", "the VM", va.get(key),
                                    vb.get(key)))
        both("migrate to the lost host",
             lambda s: s.world.api.call("POST", f"/vms/{vm}/migrate", json=body,
                                        params={"dry_run": "true"}))
    finally:
        lose(False)
        twin.lose_host(dest, False)
    poll(real, lambda: host(real) == "connected")
    va, vb = real.view(), sim.view()
    if va.get(f"vm {vm}") != vb.get(f"vm {vm}") or va != vb:
        found += [Divergence("host back", k, va.get(k), vb.get(k))
                  for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)]
    return found, seen
