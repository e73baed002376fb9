#!/usr/bin/env python3
"""Smoke test / probe for the libvirt lab (run as root with the lab up).

    eval "$(lab/libvirt-lab.sh env)"
    .venv/bin/python lab/smoke_migration.py [scenario ...]

Scenarios (default: all, in this order):
  p2p       migrateToURI3(LIVE|PEER2PEER|PERSIST_DEST|UNDEFINE_SOURCE) node1 -> node2
            (tcp dest URI), polling dom.jobStats() on the source, recording events
  p2p-unix  the same back node2 -> node1 with the unix-socket dest URI
  direct    client-managed (non-p2p) dom.migrate3(dconn, ...) node1 -> node2 and back
  converge  migrate lab-vm-busy (never converges), watch jobStats iterations,
            then migrateSetMaxDowntime() lets it finish
  abort     dom.abortJob() on the source during a migration of lab-vm-busy
  kill-dest libvirt-lab.sh kill-daemon 2 during a migration node1 -> node2,
            then start-daemon 2 and look at both sides
  kill-src  the same with node 1's (the source's) libvirtd
Prints what it sees; exits non-zero if an expectation fails.
"""
import os
import subprocess
import sys
import threading
import time

import libvirt

LAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libvirt-lab.sh")
URI1 = os.environ["LAB_NODE1_URI"]
URI2 = os.environ["LAB_NODE2_URI"]
TCP1 = os.environ["LAB_NODE1_TCP_URI"]
TCP2 = os.environ["LAB_NODE2_TCP_URI"]
GUEST = os.environ.get("LAB_SMOKE_GUEST", "lab-vm-01")
BUSY = os.environ.get("LAB_BUSY_GUEST", "lab-vm-busy")

P2P_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
             | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)

# Over the veth pair an unlimited migration moves the busy guest's whole dirty
# set (~46 MiB) well inside the default 300 ms max downtime, so it converges;
# at 20 MiB/s every pass takes ~2.3 s and it never does.
BUSY_PARAMS = {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 20}  # MiB/s

failures = []
events = []


def check(cond, what):
    print(("  ok   " if cond else "  FAIL ") + what)
    if not cond:
        failures.append(what)


def err_name(code, prefix="VIR_ERR_"):
    for k in dir(libvirt):
        if k.startswith(prefix) and getattr(libvirt, k) == code:
            return k
    return str(code)


def describe(e):
    return "code=%s(%s) domain=%s(%s) msg=%r" % (
        e.get_error_code(), err_name(e.get_error_code()),
        e.get_error_domain(), err_name(e.get_error_domain(), "VIR_FROM_"),
        e.get_error_message())


# ---- events -----------------------------------------------------------------
libvirt.registerErrorHandler(lambda ctx, err: None, None)  # no stderr noise
libvirt.virEventRegisterDefaultImpl()


def _loop():
    while True:
        libvirt.virEventRunDefaultImpl()


threading.Thread(target=_loop, daemon=True).start()


def register(conn, label):
    def lifecycle(c, dom, ev, detail, opaque):
        events.append((time.monotonic(), label, "lifecycle", dom.name(), ev, detail))

    def job_completed(c, dom, stats, opaque):
        events.append((time.monotonic(), label, "job-completed", dom.name(),
                       {k: stats[k] for k in ("type", "operation", "time_elapsed",
                                              "downtime", "memory_processed") if k in stats}))

    def iteration(c, dom, it, opaque):
        events.append((time.monotonic(), label, "migration-iteration", dom.name(), it))

    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle, None)
    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, job_completed, None)
    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION, iteration, None)
    conn.setKeepAlive(5, 3)


def connect(uri, label):
    c = libvirt.open(uri)
    register(c, label)
    return c


# ---- helpers -------------------------------------------------------------------
def ensure_running_on(conn, other, name=GUEST):
    """Make guest `name` run on conn (moving it back from `other` if needed)."""
    try:
        d = other.lookupByName(name)
        if d.isActive() and name != BUSY:
            d.migrateToURI3(conn.getURI(), {}, P2P_FLAGS)
        else:  # the busy guest would never converge: move it cold
            if d.isActive():
                d.destroy()
            conn.defineXML(d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            if d.isPersistent():
                d.undefine()
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise
    d = conn.lookupByName(name)
    if not d.isActive():
        d.create()
        if name == BUSY:
            time.sleep(2)  # let SeaBIOS hand over to the busy loop
    return conn.lookupByName(name)


def where(c1, c2, name=GUEST):
    out = {}
    for label, c in (("node1", c1), ("node2", c2)):
        try:
            d = c.lookupByName(name)
            out[label] = (d.state()[0], d.isPersistent())
        except libvirt.libvirtError as e:
            out[label] = err_name(e.get_error_code())
    return out


def migrate_in_thread(dom, dest_uri, params, flags):
    res = {}

    def run():
        t = time.monotonic()
        try:
            dom.migrateToURI3(dest_uri, params, flags)
            res["ok"] = True
        except libvirt.libvirtError as e:
            res["err"] = e
        res["secs"] = time.monotonic() - t

    th = threading.Thread(target=run)
    th.start()
    return th, res


def poll_job(dom, th, interval=0.05):
    samples = []
    while th.is_alive():
        try:
            t = time.monotonic()
            st = dom.jobStats()
            st["_call_secs"] = time.monotonic() - t
            if st.get("type", 0) != libvirt.VIR_DOMAIN_JOB_NONE:
                samples.append(st)
        except libvirt.libvirtError as e:
            samples.append({"error": describe(e)})
        time.sleep(interval)
    return samples


# ---- scenarios -------------------------------------------------------------------
def lab(*args):
    p = subprocess.run([LAB, *args], capture_output=True, text=True)
    sys.stdout.write("".join("  | " + line + "\n" for line in (p.stderr + p.stdout).splitlines()))
    if p.returncode != 0:
        raise RuntimeError("libvirt-lab.sh %s failed with %d" % (" ".join(args), p.returncode))
    return p.stdout


def sc_p2p(c1, c2, dest=None, src=None, dst=None, label="p2p"):
    src = src or c1
    dst = dst or c2
    dest = dest or TCP2
    print("[%s] migrateToURI3 %s -> %s" % (label, src.getURI(), dest))
    dom = ensure_running_on(src, dst)
    del events[:]
    th, res = migrate_in_thread(dom, dest, {}, P2P_FLAGS)
    samples = poll_job(dom, th)
    th.join()
    print("  took %.2fs, %d jobStats samples while running" % (res["secs"], len(samples)))
    if "err" in res:
        print("  error:", describe(res["err"]))
    check(res.get("ok"), "migration succeeded")
    good = [s for s in samples if "error" not in s]
    if good:
        print("  jobStats keys:", sorted(good[-1]))
    for s in samples:
        if "error" in s:
            print("   ", s["error"])
        else:
            print("    call %.3fs type=%s op=%s elapsed=%sms mem processed=%s remaining=%s total=%s"
                  % (s["_call_secs"], s.get("type"), s.get("operation"), s.get("time_elapsed"),
                     s.get("memory_processed"), s.get("memory_remaining"), s.get("memory_total")))
    # An idle 64 MiB guest moves only ~0.6 MB, in the last few ms of the job:
    # a 50 ms poller often sees only setup-phase zeros.  Progress values are
    # checked with the busy guest in the 'converge' scenario.
    check(any({"memory_processed", "memory_remaining", "memory_total", "data_processed"}
              <= set(s) for s in good),
          "jobStats during migration has progress keys")
    try:
        done = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        print("  completed jobStats on source: type=%s time_elapsed=%s downtime=%s" % (
            done.get("type"), done.get("time_elapsed"), done.get("downtime")))
    except libvirt.libvirtError as e:
        print("  completed jobStats on source (domain is gone there):", describe(e))
    time.sleep(1.0)
    w = where(c1, c2)
    print("  where:", w)
    check(w["node2" if dst is c2 else "node1"] == (libvirt.VIR_DOMAIN_RUNNING, 1),
          "guest runs (persistent) on destination")
    for ev in events:
        print("  event:", ev[1:])
    check(any(ev[2] == "lifecycle" and ev[1] == ("node2" if dst is c2 else "node1")
              and ev[4] == libvirt.VIR_DOMAIN_EVENT_RESUMED for ev in events),
          "lifecycle RESUMED event from destination over the unix socket")


def sc_p2p_unix(c1, c2):
    # back node2 -> node1, destination given as node1's unix-socket URI
    sc_p2p(c1, c2, dest=URI1, src=c2, dst=c1, label="p2p-unix")


def sc_direct(c1, c2):
    print("[direct] dom.migrate3(dconn) node1 -> node2, client-managed (no P2P)")
    dom = ensure_running_on(c1, c2)
    t = time.monotonic()
    flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
             | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    try:
        dom.migrate3(c2, {}, flags)
        print("  took %.2fs" % (time.monotonic() - t))
        check(where(c1, c2)["node2"] == (libvirt.VIR_DOMAIN_RUNNING, 1), "direct migration")
    except libvirt.libvirtError as e:
        print("  error:", describe(e))
        check(False, "direct migration")


def sc_converge(c1, c2):
    print("[converge] busy guest never converges; watch jobStats, then raise max downtime")
    dom = ensure_running_on(c1, c2, BUSY)
    th, res = migrate_in_thread(dom, TCP2, BUSY_PARAMS, P2P_FLAGS)
    t = time.monotonic()
    last = {}
    while time.monotonic() - t < 6 and th.is_alive():
        time.sleep(0.5)
        last = dom.jobStats()
        print("    elapsed=%sms iteration=%s processed=%s remaining=%s dirty_rate=%s pages/s" % (
            last.get("time_elapsed"), last.get("memory_iteration"), last.get("memory_processed"),
            last.get("memory_remaining"), last.get("memory_dirty_rate")))
    check(th.is_alive(), "migration of the busy guest still running after 6 s")
    check(last.get("memory_iteration", 0) > 1, "several memory iterations")
    check(last.get("memory_processed", 0) > 0 and last.get("memory_total", 0) > 0,
          "jobStats shows progress (memory_processed > 0)")
    dom.migrateSetMaxDowntime(10000)  # ms
    th.join(60)
    print("  after raising max downtime: %s" % (describe(res["err"]) if "err" in res else "done"),
          "after %.2fs" % res.get("secs", -1))
    check(res.get("ok"), "busy guest migrated after migrateSetMaxDowntime")
    check(where(c1, c2, BUSY)["node2"] == (libvirt.VIR_DOMAIN_RUNNING, 1), "busy guest runs on node2")
    c2.lookupByName(BUSY).destroy()


def sc_abort(c1, c2):
    print("[abort] abortJob() during migration node1 -> node2 (busy guest)")
    dom = ensure_running_on(c1, c2, BUSY)
    th, res = migrate_in_thread(dom, TCP2, BUSY_PARAMS, P2P_FLAGS)
    time.sleep(1.5)
    st = dom.jobStats()
    print("  before abort: type=%s iteration=%s processed=%s" % (
        st.get("type"), st.get("memory_iteration"), st.get("memory_processed")))
    t = time.monotonic()
    dom.abortJob()
    print("  abortJob returned after %.2fs" % (time.monotonic() - t))
    th.join(60)
    print("  migrateToURI3 returned %.2fs after abortJob:" % (time.monotonic() - t),
          describe(res["err"]) if "err" in res else "OK(!)")
    check("err" in res and res["err"].get_error_code() == libvirt.VIR_ERR_OPERATION_ABORTED,
          "migrateToURI3 fails with VIR_ERR_OPERATION_ABORTED")
    time.sleep(0.5)
    w = where(c1, c2, BUSY)
    print("  where:", w)
    check(w["node1"] == (libvirt.VIR_DOMAIN_RUNNING, 1), "guest still runs on node1")
    check(w["node2"] == "VIR_ERR_NO_DOMAIN", "nothing left on node2")
    try:
        done = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        print("  completed jobStats: type=%s errmsg=%s" % (done.get("type"), done.get("errmsg")))
    except libvirt.libvirtError as e:
        print("  completed jobStats:", describe(e))
    dom.destroy()


def sc_kill_dest(c1, c2):
    print("[kill-dest] kill -9 node2's libvirtd during migration node1 -> node2 (busy guest)")
    dom = ensure_running_on(c1, c2, BUSY)
    th, res = migrate_in_thread(dom, TCP2, BUSY_PARAMS, P2P_FLAGS)
    time.sleep(1.5)
    lab("kill-daemon", "2")
    t = time.monotonic()
    th.join(120)
    print("  migrateToURI3 returned %.2fs after the kill:" % (time.monotonic() - t),
          describe(res["err"]) if "err" in res else "OK(!)")
    check("err" in res, "migration failed")
    try:
        d = c1.lookupByName(BUSY)
        print("  source state:", d.state(), "persistent:", d.isPersistent())
        check(d.state()[0] == libvirt.VIR_DOMAIN_RUNNING, "guest still running on node1")
    except libvirt.libvirtError as e:
        print("  source lookup:", describe(e))
        check(False, "guest still on node1")
    try:
        c2.listAllDomains()
        print("  old node2 connection still works (!)")
    except libvirt.libvirtError as e:
        print("  old node2 connection:", describe(e))
    lab("start-daemon", "2")
    c2b = libvirt.open(URI2)
    time.sleep(1)
    doms = [(d.name(), d.state(), d.isPersistent()) for d in c2b.listAllDomains()]
    print("  node2 domains after restart:", doms)
    check(not [d for d in doms if d[0] == BUSY], "node2 has no leftover busy guest after restart")
    c1.lookupByName(BUSY).destroy()
    # an idle guest must be migratable to the restarted daemon
    d = ensure_running_on(c1, c2b)
    d.migrateToURI3(TCP2, {}, P2P_FLAGS)
    check(c2b.lookupByName(GUEST).isActive(), "migration works again after restart")
    return c2b


def sc_kill_src(c1, c2):
    print("[kill-src] kill -9 node1's libvirtd during migration node1 -> node2 (busy guest)")
    dom = ensure_running_on(c1, c2, BUSY)
    th, res = migrate_in_thread(dom, TCP2, BUSY_PARAMS, P2P_FLAGS)
    time.sleep(1.5)
    lab("kill-daemon", "1")
    t = time.monotonic()
    th.join(120)
    print("  migrateToURI3 returned %.2fs after the kill:" % (time.monotonic() - t),
          describe(res["err"]) if "err" in res else "OK(!)")
    check("err" in res, "migration call failed")
    time.sleep(1)
    doms = [(d.name(), d.state(), d.isPersistent()) for d in c2.listAllDomains()]
    print("  node2 domains while node1 is dead:", doms)
    lab("start-daemon", "1")
    c1b = libvirt.open(URI1)
    time.sleep(1)
    d = c1b.lookupByName(BUSY)
    print("  node1 busy guest after restart: state=%s persistent=%s" % (d.state(), d.isPersistent()))
    doms = [(d.name(), d.state(), d.isPersistent()) for d in c2.listAllDomains()]
    print("  node2 domains after node1 restart:", doms)
    check(d.state()[0] == libvirt.VIR_DOMAIN_RUNNING, "source guest running again after restart")
    d.destroy()
    return ("c1", c1b)


SCENARIOS = [("p2p", sc_p2p), ("p2p-unix", sc_p2p_unix), ("direct", sc_direct),
             ("converge", sc_converge), ("abort", sc_abort), ("kill-dest", sc_kill_dest),
             ("kill-src", sc_kill_src)]


def main(argv):
    wanted = argv or [n for n, _ in SCENARIOS]
    c1 = connect(URI1, "node1")
    c2 = connect(URI2, "node2")
    for name, fn in SCENARIOS:
        if name in wanted:
            r = fn(c1, c2)
            if isinstance(r, tuple):  # node1 connection was replaced
                c1 = r[1]
                register(c1, "node1")
            elif r is not None:  # node2 connection was replaced
                c2 = r
                register(c2, "node2")
    if failures:
        print("FAILED:", *failures, sep="\n  ")
        return 1
    print("all smoke checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
