#!/usr/bin/env python3
"""Splits a server's perf samples into where the CPU per message goes.

Reads `perf script -F ip,sym` output (call-graph samples, leaf first, blank line between samples) on
standard input and prints one JSON object: the share of samples in each class. A sample is classed by
the first rule that matches, in this order:

- user:      the leaf is not a kernel address (the server's own code and its libraries);
- lockspin:  the leaf is the queued spin lock's slow path (a CPU waiting for a lock another holds:
             under a hypervisor, also the cost of a preempted holder);
- network:   the stack holds the TCP/IP stack's entry points: sending (tcp_sendmsg, which on loopback
             also runs the peer's receive in softirq), receiving (tcp_recvmsg), and softirq receive
             processing (net_rx_action). This is the work every server does per message, whatever
             its loop: the same bytes, the same segments;
- sleepwake: the stack holds the scheduler (schedule, finish_task_switch) or a wake-up path outside
             the network stack: what a loop pays to sleep and be woken;
- loop:      anything else in the kernel (io_uring_enter's own work: submitting, task work, posting and
             waiting for completions; epoll_wait; other syscalls): the loop's kernel overhead.
"""
import collections
import json
import os
import sys

NETWORK = ("tcp_sendmsg", "tcp_recvmsg", "net_rx_action", "tcp_v4_rcv", "__tcp_push_pending_frames",
           "tcp_sendmsg_locked", "tcp_recvmsg_locked", "inet_recvmsg", "inet_sendmsg")
SLEEPWAKE = ("schedule", "__schedule", "finish_task_switch.isra.0", "finish_task_switch", "schedule_hrtimeout_range",
             "try_to_wake_up", "io_cqring_wait_schedule", "ep_poll", "do_idle")
SPIN = ("__pv_queued_spin_lock_slowpath", "native_queued_spin_lock_slowpath", "queued_spin_lock_slowpath")


def classify(frames):
    leaf_ip, leaf_sym = frames[0]
    if not leaf_ip.startswith("ffff"):
        return "user"
    if leaf_sym in SPIN:
        return "lockspin"
    syms = [s for _, s in frames]
    if any(s in NETWORK for s in syms):
        return "network"
    if any(s in SLEEPWAKE for s in syms):
        return "sleepwake"
    return "loop"


def main():
    counts = {"user": 0, "lockspin": 0, "network": 0, "sleepwake": 0, "loop": 0}
    # COST_SPLIT_DETAIL=CLASS: also print (to stderr) the frames that CLASS's samples share most, by
    # inclusive share of all samples: which functions make up that class.
    detail = os.environ.get("COST_SPLIT_DETAIL")
    inclusive = collections.Counter()
    # COST_SPLIT_LEAVES=FILE: also write each leaf function's share of all samples (self time, user
    # space as one "[user]" entry) to FILE as JSON: bench/cost-split.sh --symbols compares servers by it.
    leaves_path = os.environ.get("COST_SPLIT_LEAVES")
    leaves = collections.Counter()

    def record(frames):
        c = classify(frames)
        counts[c] += 1
        leaves["[user]" if c == "user" else frames[0][1]] += 1
        if c == detail:
            inclusive.update(set(sym for _, sym in frames))

    frames = []
    for line in sys.stdin:
        line = line.strip()
        if not line:
            if frames:
                record(frames)
            frames = []
            continue
        parts = line.split(None, 1)
        if len(parts) == 1:
            parts.append("?")
        ip, sym = parts[0], parts[1].split("+0x")[0]
        frames.append((ip, sym))
    if frames:
        record(frames)
    total = sum(counts.values())
    if leaves_path and total:
        with open(leaves_path, "w") as f:
            json.dump({sym: n / total for sym, n in leaves.items()}, f)
    if detail and total:
        for sym, n in inclusive.most_common(40):
            print(f"{100 * n / total:6.2f}%  {sym}", file=sys.stderr)
    print(json.dumps({"samples": total, **{k: (v / total if total else 0.0) for k, v in counts.items()}}))


if __name__ == "__main__":
    main()
