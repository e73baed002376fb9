#!/usr/bin/env python3
"""Child subreaper for a lab libvirtd:  reaper.py PROGRAM [ARGS...]

libvirtd daemonizes every QEMU (double fork), so QEMU's parent becomes the
nearest "child subreaper" or PID 1.  On this kind of machine PID 1 is not a
real init and reaps zombies only every ~2 s; libvirt waits (kill(pid, 0)) until
the zombie is gone, so each `virsh destroy` and the end of each migration took
~2 s.  This wrapper marks itself PR_SET_CHILD_SUBREAPER, runs PROGRAM as its
child, forwards SIGTERM/SIGINT/SIGHUP to it and reaps every orphan at once.

It stays alive after PROGRAM dies (e.g. `libvirt-lab.sh kill-daemon N`) for as
long as orphaned QEMUs remain, so they are still reaped promptly when a
restarted libvirtd destroys them; then it exits with PROGRAM's status.
"""
import contextlib
import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def main():
    if len(sys.argv) < 2:
        sys.stderr.write("usage: reaper.py PROGRAM [ARGS...]\n")
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.stderr.write("reaper: prctl(PR_SET_CHILD_SUBREAPER) failed: %s\n"
                         % os.strerror(ctypes.get_errno()))
    pid = os.fork()
    if pid == 0:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        try:
            os.execvp(sys.argv[1], sys.argv[1:])
        finally:
            os._exit(127)

    def forward(signum, frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)

    status = 0
    while True:
        try:
            child, st = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if child == pid:
            status = os.waitstatus_to_exitcode(st)
            sys.stderr.write("reaper: %s (pid %d) exited with %d\n" % (sys.argv[1], pid, status))
            sys.stderr.flush()
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main())
